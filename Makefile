# Everything runs from .venv; `make demo` and `make test` set it up themselves on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
M ?=

.PHONY: install demo test lint bench bench-gpu clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

demo: install
	$(PY) -m common.demo $(M)

# One pytest worker per core, a test file per worker (its module fixtures built once, its fixed torchrun port used by
# one worker at a time), one thread each: two workers of two threads on two cores stall at OpenMP barriers.
test: install lint
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -n auto --dist loadfile

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# Every GPU bench within 8 minutes on one GPU, one table at the end ("no CUDA" rows and exit 0 without a GPU).
bench-gpu: install
	PY=$(PY) bash bench/gpu_all.sh

clean:
	rm -rf outputs multirun .cache

"""bench/gpu_all.sh: every GPU bench under its budget, one table of their figures; "no CUDA" rows and exit 0 without a
GPU. The GPU itself is not needed: a stand-in interpreter plays benches that finish, run out of time and fail."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from common.bench import HEADER, Figures, render_table, table_rows
from tests.helpers import REPO

BENCHES = ["gpu_unlearning", "m4_extract", "m4_gpu_step"]


def gpu_all(env: dict[str, str], timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "bench/gpu_all.sh")],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def table(stdout: str) -> list[list[str]]:
    """The rows of the Markdown table at the end of the output, the header first, the rule left out."""
    lines = [line for line in stdout.splitlines() if line.startswith("|") and not line.startswith("|-")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]


def test_without_cuda_every_bench_has_a_no_cuda_row_and_the_script_exits_0():
    proc = gpu_all({"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    header, *rows = table(proc.stdout)
    assert header == HEADER
    assert rows == [[b, "-", "no CUDA", "", ""] for b in BENCHES]


STAND_IN = """#!/usr/bin/env bash
# CUDA "present"; gpu_unlearning writes its figures, m4_extract writes one then outlives its budget, m4_gpu_step fails.
case "$1" in
  -c) exit 0 ;;
  -m) exec {python} "$@" ;;
esac
json="${{@: -1}}"
case "$1" in
  *gpu_unlearning.py) echo '{unlearning}' > "$json" ;;
  *m4_extract.py) echo '{extract}' > "$json"; sleep 30 ;;
  *) echo boom >&2; exit 3 ;;
esac
"""


def test_the_table_holds_each_benchs_figures_and_what_went_wrong(tmp_path):
    figure = {"figure": "MFU, checkpointing on", "value": 41.5, "unit": "%", "goal": ">= 35"}
    unlearning = {"bench": "gpu_unlearning", "device": "GPU X", "note": "", "figures": [figure]}
    partial = {"figure": "read throughput", "value": 900.0, "unit": "patches/s", "goal": "", "min": 850.0, "max": 950}
    extract = {"bench": "m4_extract", "device": "GPU X", "note": "", "figures": [partial]}
    py = tmp_path / "py"
    py.write_text(
        STAND_IN.format(python=sys.executable, unlearning=json.dumps(unlearning), extract=json.dumps(extract))
    )
    py.chmod(0o755)
    proc = gpu_all({"PY": str(py), "GPU_BUDGET_M4_EXTRACT": "2", "GPU_BUDGET_TOTAL": "40"})
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a bench failed: said by the exit status too
    header, *rows = table(proc.stdout)
    assert header == HEADER
    assert rows == [
        ["gpu_unlearning", "device", "GPU X", "", ""],
        ["gpu_unlearning", "MFU, checkpointing on", "41.50", "%", ">= 35"],
        ["m4_extract", "device", "GPU X", "", ""],
        ["m4_extract", "read throughput", "900 (850-950)", "patches/s", ""],  # written before its time ran out
        ["m4_extract", "-", "timed out after 2 s", "", ""],
        ["m4_gpu_step", "-", "failed (exit 3)", "", ""],
    ]
    assert "== bench/m4_extract.py --device cuda" in proc.stdout and "boom" in proc.stderr


def test_figures_file_is_valid_json_at_every_point(tmp_path):
    path = tmp_path / "b.json"
    figures = Figures(path, "b")
    assert json.loads(path.read_text())["figures"] == []  # there from the start: a crash still leaves the file
    figures.device("GPU X")
    figures.add("peak memory", math.nan, "GB", "<= 40")  # not measured (no CUDA allocator): null, not NaN
    figures.spread("step", [3.0, 1.0, 2.0], "ms")
    figures.add("checkpointing off", "out of memory")
    data = json.loads(path.read_text())
    assert data["device"] == "GPU X" and data["figures"][0]["value"] is None
    assert data["figures"][1] == {"figure": "step", "value": 2.0, "unit": "ms", "goal": "", "min": 1.0, "max": 3.0}
    (tmp_path / "b.status").write_text("ok\n")
    rows = table_rows(tmp_path, ["b"])
    assert rows[1:] == [
        ["b", "peak memory", "n/a", "GB", "<= 40"],
        ["b", "step", "2.00 (1.00-3.00)", "ms", ""],
        ["b", "checkpointing off", "out of memory", "", ""],
    ]
    Figures(None, "nothing written").add("x", 1.0)  # without a path: no file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "b.status"]
    assert "max a\\|b" in render_table(["figure"], [["max a|b"]])  # a bar inside a cell does not split it

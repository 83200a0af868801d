#!/usr/bin/env bash
# Every GPU bench of bench/ on one GPU within 8 minutes, then one table of all their figures (bench, figure, value,
# unit, goal), so a short loan of a GPU gives every GPU figure at once.
#
#   bash bench/gpu_all.sh          (or: make bench-gpu)
#
# The benches with a CUDA path: gpu_unlearning.py (MEOW+KL LoRA step and generation on a Llama-2-7B shape),
# m4_extract.py (its GPU part: ViT-L/16 at 224 px, on an 8192 px slide instead of its 16384 px default: drawing and
# writing the synthetic slide is CPU work: 2.3 min at 8192 px (612 patches) on 2 busy cores, four times that at 16384),
# m4_gpu_step.py (M4 step and trainer runs; 16 bags instead of 32). The CPU benches (`make bench`) are not run here.
# The budgets are estimates, not yet checked on a GPU. Each bench runs under its own time budget in seconds
# (GPU_BUDGET_<BENCH>, e.g. GPU_BUDGET_M4_EXTRACT=200) and never past the
# total (GPU_BUDGET_TOTAL, 470 s: under 8 minutes with the start-up), prints its own output as it runs and writes its
# figures with --json; the table is assembled from those files. A bench stopped by its budget keeps the figures it
# had written, with a "timed out" row. Without CUDA (asked once) nothing is run: every bench gets a "no CUDA" row and
# the script exits 0. With CUDA it exits 1 when a bench failed or ran out of time.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

total=${GPU_BUDGET_TOTAL:-470}
benches=(gpu_unlearning m4_extract m4_gpu_step)
declare -A budget=(
    [gpu_unlearning]=${GPU_BUDGET_GPU_UNLEARNING:-100}
    [m4_extract]=${GPU_BUDGET_M4_EXTRACT:-200}
    [m4_gpu_step]=${GPU_BUDGET_M4_GPU_STEP:-150}
)
declare -A args=(
    [gpu_unlearning]=""
    [m4_extract]="--device cuda --size 8192 --repeats 3"
    [m4_gpu_step]="--bags 16 --repeats 3"
)

out=$(mktemp -d "${TMPDIR:-/tmp}/gpu_all.XXXXXX")
trap 'rm -rf "$out"' EXIT

if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    cuda=1
else
    cuda=0
    echo "no CUDA device: no GPU bench is run (each gets a 'no CUDA' row)"
fi

failed=0
for b in "${benches[@]}"; do
    if [ "$cuda" = 0 ]; then
        echo "no CUDA" >"$out/$b.status"
        continue
    fi
    left=$((total - SECONDS - 5))
    limit=${budget[$b]}
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -le 0 ]; then
        echo "not run: the ${total} s total was spent" >"$out/$b.status"
        failed=1
        continue
    fi
    echo "== bench/$b.py${args[$b]:+ ${args[$b]}} (budget ${limit} s)"
    mkdir -p "$out/tmp"
    # The benches' temporary slides and bags go under $out, removed at the end; the arguments are words.
    # shellcheck disable=SC2086
    TMPDIR="$out/tmp" timeout -k 5 "$limit" "$PY" "bench/$b.py" ${args[$b]} --json "$out/$b.json"
    rc=$?
    case $rc in
        0) echo "ok" >"$out/$b.status" ;;
        124 | 137) echo "timed out after ${limit} s" >"$out/$b.status"; failed=1 ;;
        *) echo "failed (exit $rc)" >"$out/$b.status"; failed=1 ;;
    esac
done

echo
echo "GPU benches, ${SECONDS} s in all:"
"$PY" -m common.bench table "$out" "${benches[@]}"
exit "$failed"

"""`make demo`: run every method's main job on its embedded default and print one summary table.

`python -m common.demo [method ...]`; with no names, every package in methods/ that has a __main__.
"""
from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

from common.report import collect, render
from common.results import markdown_table

REPO = Path(__file__).resolve().parent.parent
MAIN_JOB = "train"


def available_methods() -> list[str]:
    return sorted(p.parent.name for p in (REPO / "methods").glob("*/__main__.py"))


def main(argv: list[str]) -> int:
    methods = argv or available_methods()
    unknown = set(methods) - set(available_methods())
    if unknown:
        print(f"error: unknown method(s) {', '.join(sorted(unknown))}; available: {', '.join(available_methods())}", file=sys.stderr)
        return 2
    timings, failed = [], []
    for method in methods:
        run_dir = REPO / "outputs" / "demo" / method
        print(f"== {method}: python -m methods.{method} {MAIN_JOB}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", f"methods.{method}", MAIN_JOB, f"hydra.run.dir={run_dir}"], cwd=REPO)
        # ru_maxrss of children is the largest peak among the finished subprocesses (KiB on Linux).
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        timings.append([method, time.perf_counter() - start, peak_gb, "ok" if proc.returncode == 0 else f"exit {proc.returncode}"])
        if proc.returncode != 0:
            failed.append(method)
    print("\n# demo summary\n")
    print(markdown_table(["method", "wall s", "peak GB (max so far)", "status"], timings))
    done = [REPO / "outputs" / "demo" / m for m in methods if m not in failed]
    if done:
        print()
        print(render(collect(done)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

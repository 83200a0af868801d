"""`make demo`: run every method's main job on its embedded default, then print one compact table per method in its
paper's shape (the full listings stay in each run's results.json and summary.md).

`python -m common.demo [method ...]`; with no names, every package in methods/ that has a __main__.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from common.config import method_spec
from common.results import markdown_table

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "outputs" / "demo"


def available_methods() -> list[str]:
    return sorted(p.parent.name for p in (REPO / "methods").glob("*/__main__.py"))


def run(method: str) -> tuple[int, float, Path]:
    """The method's main job into outputs/demo/<method>/, its output in outputs/demo/<method>.log."""
    spec = method_spec(method)
    log = OUT / f"{method}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"== {method}: python -m methods.{method} {spec.main_job}   (log: {log.relative_to(REPO)})", flush=True)
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", f"methods.{method}", spec.main_job, f"hydra.run.dir={OUT / method}"],
            cwd=REPO,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    if proc.returncode != 0:
        print("".join(log.read_text().splitlines(keepends=True)[-15:]), end="")
    return proc.returncode, time.perf_counter() - start, OUT / method


def main(argv: list[str]) -> int:
    methods = argv or available_methods()
    unknown = set(methods) - set(available_methods())
    if unknown:
        print(
            f"error: unknown method(s) {', '.join(sorted(unknown))}; available: {', '.join(available_methods())}",
            file=sys.stderr,
        )
        return 2
    rows, tables = [], []
    for method in methods:
        code, seconds, run_dir = run(method)
        # ru_maxrss of children is the largest peak among the finished subprocesses (KiB on Linux).
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        rows.append([method, f"{seconds:.0f}", f"{peak_gb:.2g}", "ok" if code == 0 else f"exit {code}"])
        table = method_spec(method).table
        if code == 0 and table is not None:
            metrics = json.loads((run_dir / "results.json").read_text())["metrics"]
            tables.append(f"## {method}\n\n{table(metrics)}")
    print("\n# demo\n")
    print(markdown_table(["method", "wall s", "peak GB (max so far)", "status"], rows))
    for t in tables:
        print("\n" + t)
    return 0 if all(r[3] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

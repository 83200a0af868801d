"""How fast the CLI answers: `python -m methods.<m> --help`, `<main job> --help` and one rejected setting (exit 2), for
every method, against the interpreter's own start (`python -c pass`) and, for scale, `python -c "import torch"`.

Goal: each answers within 1 s. Every case runs in a fresh process; the cases are interleaved (all of them once per
repeat, in an order that rotates every repeat), so a busy spell slows all of them alike; the median and spread
(min-max) of the wall times are printed with the ratio to `python -c pass` of the same repeat, and the load average
before and after. Usage: python bench/cli_latency.py [--repeats 5] [--methods meow,m4,...]

Measured here (2 shared cores): at load ~2.4, `--help` 0.22-0.39 s (medians), `<main job> --help` and a rejected
setting 0.53-0.96 s, `import torch` 3.0 s: goal met. Before commands were named lazily (same bench, 3 repeats, load
~4): `--help` 6-11 s, the others 6-26 s, `import torch` 4.7 s. What is left is Hydra's composition and the schema's
validation (~0.5 s on an idle core), which a loaded machine stretches like everything else (load ~4.5: 0.4-1.9 s).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common.bench import load, spread
from common.config import method_spec

REPO = Path(__file__).resolve().parents[1]
GOAL_S = 1.0
METHODS = ("meow", "m4", "dqmq", "medmfg", "esc_eval", "guardrank", "flames", "fine")
# A setting each method rejects at compose time: a registered name where it has such a setting, else a bound.
REJECTED = {
    "meow": "method=nope",
    "m4": "train.models=[nope]",
    "dqmq": "net.arch=nope",
    "medmfg": "eval.methods=[nope]",
    "fine": "judge.name=nope",
}
BASELINES = {"python -c pass": ["-c", "pass"], "python -c 'import torch'": ["-c", "import torch"]}


def cases(methods: list[str]) -> dict[str, tuple[list[str], int]]:
    """name -> (interpreter arguments, the exit code it must end with)."""
    out = {name: (args, 0) for name, args in BASELINES.items()}
    for m in methods:
        job = method_spec(m).main_job
        bad = REJECTED.get(m, "trainer.batch_size=-1")
        out[f"{m} --help"] = (["-m", f"methods.{m}", "--help"], 0)
        out[f"{m} {job} --help"] = (["-m", f"methods.{m}", job, "--help"], 0)
        out[f"{m} {job} {bad}"] = (["-m", f"methods.{m}", job, bad], 2)
    return out


def wall(args: list[str], code: int) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != code:
        raise SystemExit(f"{' '.join(args)}: exit {done.returncode}, expected {code}\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    todo = cases(args.methods.split(","))
    names = list(todo)
    times: dict[str, list[float]] = {name: [] for name in names}
    print(f"before: {load()}; {len(names)} cases x {args.repeats} interleaved repeats")
    for r in range(args.repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(wall(*todo[name]))
    base = times["python -c pass"]
    width = max(len(n) for n in names)
    print(f"\n{'case':<{width}}  wall time                           x python -c pass")
    over = []
    for name in names:
        ratios = [t / b for t, b in zip(times[name], base, strict=True)]
        print(f"{name:<{width}}  {spread(times[name], ' s')}  {spread(ratios, 'x', 1)}")
        if name not in BASELINES and statistics.median(times[name]) > GOAL_S:
            over.append(name)
    print(f"\nafter: {load()}")
    print(f"goal: every CLI case within {GOAL_S:.0f} s (median): " + (f"over: {', '.join(over)}" if over else "met"))


if __name__ == "__main__":
    main()

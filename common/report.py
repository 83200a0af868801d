"""Tables (and plots) across runs: `python -m common.report <run dirs or multirun dirs> [--out report.md] [--plot]`.

Every results.json below the given directories is one run. A run is named by its Hydra overrides (a sweep's jobs
differ by those), else by its path. Metrics named `<group>/<metric>` (e.g. `meow/forget_quality`) become rows of
their group, which is how a single run that compares several models reads best. Where a run's config records the
paper's numbers (`paper: {metric: value}`), they stand beside ours as `<metric> (paper)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from common.errors import UserError
from common.results import markdown_table


def find_runs(paths: list[Path]) -> list[Path]:
    runs: list[Path] = []
    for p in paths:
        if not p.exists():
            raise UserError(f"{p}: no such directory")
        runs += sorted(
            f.parent for f in ([p / "results.json"] if (p / "results.json").is_file() else p.rglob("results.json"))
        )
    if not runs:
        raise UserError(f"no results.json under {', '.join(map(str, paths))}")
    return runs


def run_name(run: Path, root: Path) -> str:
    overrides = run / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        items = [o for o in yaml.safe_load(overrides.read_text()) or [] if not o.startswith(("command=", "hydra."))]
        if items:
            return ",".join(items)
    return str(run.relative_to(root)) if run != root and root in run.parents else run.name


def rows_of(name: str, results: dict) -> dict[str, dict[str, float]]:
    """{row name: {column: value}} for one run, splitting `group/metric` names into rows."""
    rows: dict[str, dict[str, float]] = {}
    paper = (results.get("config") or {}).get("paper") or {}
    for key, value in results.get("metrics", {}).items():
        group, _, metric = key.rpartition("/")
        row = f"{name} {group}".strip() if group else name
        rows.setdefault(row, {})[metric] = value
        if key in paper:
            rows[row][f"{metric} (paper)"] = paper[key]
    return rows


def collect(paths: list[Path]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for path in paths:
        for run in find_runs([path]):
            table.update(rows_of(run_name(run, path), json.loads((run / "results.json").read_text())))
    return table


def render(table: dict[str, dict[str, float]]) -> str:
    columns: list[str] = []
    for metrics in table.values():
        columns += [c for c in metrics if c not in columns]
    rows = [[name] + [metrics.get(c, "") for c in columns] for name, metrics in table.items()]
    return markdown_table(["run"] + columns, rows)


def plot(table: dict[str, dict[str, float]], out_dir: Path) -> list[Path]:
    """One bar chart per metric shared by several rows: a sweep reads better as bars than as a column of numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    metrics = {c for m in table.values() for c in m if not c.endswith("(paper)")}
    for metric in sorted(metrics):
        pairs = [(row, m[metric]) for row, m in table.items() if isinstance(m.get(metric), (int, float))]
        if len(pairs) < 2:
            continue
        fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(pairs) + 2), 3.5))
        ax.bar(range(len(pairs)), [v for _, v in pairs])
        ax.set_xticks(range(len(pairs)), [r for r, _ in pairs], rotation=45, ha="right", fontsize=7)
        ax.set_title(metric)
        fig.tight_layout()
        path = out_dir / f"report_{metric.replace('/', '_')}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m common.report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run dirs or multirun dirs")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    parser.add_argument("--plot", action="store_true", help="save a PNG bar chart per metric next to --out (or here)")
    args = parser.parse_args(argv)
    try:
        table = collect(args.paths)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    text = render(table)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.plot:
        for path in plot(table, args.out.parent if args.out else Path(".")):
            print(f"plot: {path}")


if __name__ == "__main__":
    main()

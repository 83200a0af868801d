"""What every benchmark in bench/ prints beside its timings: how busy the machine was, and a ratio's median and spread
over interleaved repeats (a single timing on a shared machine says little). The GPU benches also write their figures
as JSON (`Figures`, their `--json PATH` flag), which `bench/gpu_all.sh` gathers into one table (`python -m
common.bench table DIR BENCH...`)."""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
from pathlib import Path


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def spread(values: list[float], unit: str = "x", digits: int = 2) -> str:
    low, mid, high = (f"{v:.{digits}f}" for v in (min(values), statistics.median(values), max(values)))
    return f"median {mid}{unit} (min {low}, max {high})"


class Figures:
    """A bench's figures, machine-readable: {"bench", "device", "note", "figures": [{figure, value, unit, goal[, min,
    max]}]}. The file (when a path is given) is rewritten after every change, so a bench stopped by its time budget
    still leaves what it had measured; without a path nothing is written."""

    def __init__(self, path: str | Path | None, bench: str):
        self.path = Path(path) if path else None
        self.data: dict = {"bench": bench, "device": None, "note": "", "figures": []}
        self._write()

    def device(self, name: str) -> None:
        self.data["device"] = name
        self._write()

    def note(self, text: str) -> None:
        self.data["note"] = text
        self._write()

    def add(self, figure: str, value: float | str, unit: str = "", goal: str = "") -> None:
        """A value (a number, or what happened instead: "out of memory"); NaN is written as null (not measured)."""
        self.data["figures"].append({"figure": figure, "value": _finite(value), "unit": unit, "goal": goal})
        self._write()

    def spread(self, figure: str, values: list[float], unit: str = "", goal: str = "") -> None:
        """The median of interleaved repeats, with their min and max."""
        row = {"figure": figure, "value": _finite(statistics.median(values)), "unit": unit, "goal": goal}
        self.data["figures"].append({**row, "min": _finite(min(values)), "max": _finite(max(values))})
        self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


def _finite(v: float | str) -> float | str | None:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _number(v: float | int | str | None) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}" if abs(v) >= 1 else f"{v:.3g}"


def table_rows(folder: Path, benches: list[str]) -> list[list[str]]:
    """Rows (bench, figure, value, unit, goal) from `<bench>.json` and `<bench>.status` in folder (the status: "ok",
    "no CUDA", "timed out after N s", "failed (exit N)"): each bench's device and sizes, its figures, then its note
    and status unless all went well."""
    rows = []
    for bench in benches:
        status_file = folder / f"{bench}.status"
        status = status_file.read_text(encoding="utf-8").strip() if status_file.is_file() else "not run"
        path = folder / f"{bench}.json"
        data = None
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                rows.append([bench, "figures", f"unreadable JSON ({path.name})", "", ""])
        if data and data.get("device"):
            rows.append([bench, "device", str(data["device"]), "", ""])
        figures = data.get("figures", []) if data else []
        for f in figures:
            value = _number(f.get("value"))
            if f.get("min") is not None and f.get("max") is not None and f["min"] != f["max"]:
                value += f" ({_number(f['min'])}-{_number(f['max'])})"
            rows.append([bench, str(f.get("figure", "")), value, str(f.get("unit", "")), str(f.get("goal", ""))])
        if data and data.get("note"):
            rows.append([bench, "-", str(data["note"]), "", ""])
        if status != "ok" or not (figures or (data and data.get("note"))):
            rows.append([bench, "-", status if status != "ok" else "no figures written", "", ""])
    return rows


def render_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, columns padded to their widest cell."""
    rows = [[c.replace("|", "\\|") for c in r] for r in rows]  # a cell's own bar would end it
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


HEADER = ["bench", "figure", "value", "unit", "goal"]


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "table":
        print("usage: python -m common.bench table DIR BENCH...", file=sys.stderr)
        return 2
    print(render_table(HEADER, table_rows(Path(argv[1]), argv[2:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

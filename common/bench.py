"""What every benchmark in bench/ prints beside its timings: how busy the machine was, and a ratio's median and spread
over interleaved repeats (a single timing on a shared machine says little)."""

from __future__ import annotations

import os
import statistics


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def spread(values: list[float], unit: str = "x", digits: int = 2) -> str:
    low, mid, high = (f"{v:.{digits}f}" for v in (min(values), statistics.median(values), max(values)))
    return f"median {mid}{unit} (min {low}, max {high})"

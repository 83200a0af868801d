"""results.json and summary.md: what every command leaves in its run dir."""

from __future__ import annotations

import importlib.metadata
import math
from pathlib import Path
from typing import Any

from common.io import write_json

_PACKAGES = ("torch", "transformers", "peft", "accelerate", "timm", "hydra-core", "scikit-learn", "openslide-python")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def format_number(value: Any, digits: int = 4) -> str:
    """Floats to `digits` significant digits (0.7423, 374.4, 7.463e+06); anything else as str."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def mean_std(mean: float, std: float) -> str:
    """`0.742 ± 0.031` for a metric in [0, 1] such as an AUC; empty for a missing mean."""
    return "" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(format_number(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(run_dir: Path, title: str, metrics: dict[str, float], config: dict) -> str:
    """Write results.json (flat metrics, resolved config, package versions) and summary.md; return the summary."""
    write_json(run_dir / "results.json", {"metrics": metrics, "config": config, "versions": package_versions()})
    summary = f"# {title}\n\n" + (
        markdown_table(["metric", "value"], [[k, v] for k, v in metrics.items()]) if metrics else "(no metrics)"
    )
    (run_dir / "summary.md").write_text(summary + "\n", encoding="utf-8")
    return summary

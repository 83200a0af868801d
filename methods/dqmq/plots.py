"""Figures of a run: each method's per-layer bit allocation by quality level (heatmap) and accuracy against BitOps
for every method (Pareto plot)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend


def bit_heatmap(rows: list[dict], layer_names: list[str], title: str, path: Path) -> Path:
    """Mean weight and activation bits of every layer (columns) at every quality level (rows)."""
    levels = [r["level"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(2 + 0.6 * len(layer_names) * 2, 1.2 + 0.28 * len(levels)), squeeze=False)
    for ax, key, what in zip(axes[0], ("layer_wbits", "layer_abits"), ("weight bits", "activation bits"), strict=True):
        values = [r[key] for r in rows]
        image = ax.imshow(values, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(layer_names)), layer_names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(levels)), levels, fontsize=7)
        ax.set_title(f"{title}: {what}", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pareto(points: dict[str, tuple[float, float, float]], path: Path) -> Path:
    """points: method -> (BitOps / full precision, accuracy on the mixture, accuracy on corrupted inputs)."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for column, marker, label in ((1, "o", "mixed"), (2, "s", "corrupted")):
        ordered = sorted(points.items(), key=lambda kv: kv[1][0])
        xs, ys = [v[0] for _, v in ordered], [v[column] for _, v in ordered]
        ax.scatter(xs, ys, marker=marker, label=f"accuracy, {label}")
        front, best = [], -1.0  # the upper-left frontier: no cheaper method is as accurate
        for x, y in zip(xs, ys, strict=True):
            if y > best:
                front.append((x, y))
                best = y
        ax.plot(*zip(*front, strict=True), lw=0.8, alpha=0.6)
        if column == 1:
            for name, (x, y, _) in ordered:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("BitOps relative to full precision (log)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

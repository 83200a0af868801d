"""How well a GuardRank scorer grades (accuracy, macro-F1 and confusion per dimension, beside the majority-class
baseline) and what it says of a model under test (ASD and PAR per dimension), with their tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.results import markdown_table
from common.scorers import indices_by_dimension, labels_by_dimension, truncated_note
from methods.guardrank.data import NUM_LABELS, Record
from methods.guardrank.guardrank import asd, label_metrics, majority, par


def grading_metrics(
    records: Sequence[Record], grades: Sequence[int], train_counts: dict[str, list[int]]
) -> dict[str, float]:
    """Per dimension: n, accuracy and macro-F1 of the grades, and of always answering the training majority label."""
    metrics: dict[str, float] = {}
    for dim, idx in indices_by_dimension(records, NUM_LABELS).items():
        truth = [records[i].score for i in idx]
        metrics[f"{dim}/n"] = float(len(idx))
        metrics.update({f"{dim}/{k}": v for k, v in label_metrics(truth, [grades[i] for i in idx]).items()})
        if dim in train_counts:
            base = [majority(train_counts[dim])] * len(idx)
            metrics.update({f"{dim}/majority_{k}": v for k, v in label_metrics(truth, base).items()})
    dims = [d for d in NUM_LABELS if f"{d}/n" in metrics]
    for key in ("accuracy", "macro_f1", "majority_accuracy", "majority_macro_f1"):
        values = [metrics[f"{d}/{key}"] for d in dims if f"{d}/{key}" in metrics]
        if values:
            metrics[f"mean/{key}"] = float(np.mean(values))
    return metrics


def grading_table(metrics: dict[str, float]) -> str:
    header = ["dimension", "n", "accuracy", "macro-F1", "majority acc.", "majority macro-F1"]
    rows = []
    for dim in [*NUM_LABELS, "mean"]:
        if f"{dim}/accuracy" not in metrics:
            continue
        n = int(metrics[f"{dim}/n"]) if dim != "mean" else ""
        keys = ("accuracy", "macro_f1", "majority_accuracy", "majority_macro_f1")
        rows.append([dim, n, *(metrics.get(f"{dim}/{k}", float("nan")) for k in keys)])
    return markdown_table(header, rows) + truncated_note(metrics)


def confusion_png(path: Path, records: Sequence[Record], grades: Sequence[int]) -> Path:
    """One confusion matrix (rows: true grade, columns: predicted) per dimension present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    dims = [d for d in NUM_LABELS if any(r.dimension == d for r in records)]
    fig, axes = plt.subplots(1, len(dims), figsize=(3.2 * len(dims), 3.2), squeeze=False)
    for ax, dim in zip(axes[0], dims, strict=True):
        idx = [i for i, r in enumerate(records) if r.dimension == dim]
        k = NUM_LABELS[dim]
        cm = confusion_matrix([records[i].score for i in idx], [grades[i] for i in idx], labels=list(range(k)))
        ax.imshow(cm, cmap="Blues")
        for (t, p), v in np.ndenumerate(cm):
            ax.text(p, t, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
        ax.set(title=dim, xlabel="predicted", ylabel="true", xticks=range(k), yticks=range(k))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def attack_metrics(records: Sequence[Record], grades: Sequence[int]) -> dict[str, float]:
    """Per dimension: n, ASD and PAR; `avg` over the dimensions present (MLLMGuard's last column)."""
    metrics: dict[str, float] = {}
    for dim, mine in labels_by_dimension(records, grades, NUM_LABELS).items():
        metrics.update(
            {f"{dim}/n": float(len(mine)), f"{dim}/asd": asd(mine, NUM_LABELS[dim]), f"{dim}/par": par(mine)}
        )
    dims = [d for d in NUM_LABELS if f"{d}/n" in metrics]
    metrics["avg/asd"] = float(np.mean([metrics[f"{d}/asd"] for d in dims]))
    metrics["avg/par"] = float(np.mean([metrics[f"{d}/par"] for d in dims]))
    return metrics


def attack_table(metrics: dict[str, float]) -> str:
    dims = [d for d in NUM_LABELS if f"{d}/n" in metrics]
    rows = [[d, int(metrics[f"{d}/n"]), metrics[f"{d}/asd"], metrics[f"{d}/par"]] for d in dims]
    rows.append(["avg", "", metrics["avg/asd"], metrics["avg/par"]])
    table = markdown_table(["dimension", "n", "ASD (lower is safer)", "PAR (higher is safer)"], rows)
    return table + truncated_note(metrics)

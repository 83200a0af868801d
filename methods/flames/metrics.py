"""How well a Flames scorer scores (accuracy per dimension beside the majority-class baseline) and what it says of a
model under test (harmless rate and harmless score per dimension and overall), with their tables."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.results import markdown_table
from common.scorers import indices_by_dimension, labels_by_dimension, truncated_note
from methods.flames.data import DIMENSIONS, SCORES, Record
from methods.flames.flames import harmless_rate, harmless_score


def accuracy_metrics(
    records: Sequence[Record], predicted: Sequence[int], train_counts: dict[str, list[int]]
) -> dict[str, float]:
    """Per dimension: n, accuracy, and the accuracy of always giving the training set's most common score."""
    metrics: dict[str, float] = {}
    for dim, idx in indices_by_dimension(records, DIMENSIONS).items():
        truth = np.asarray([records[i].score for i in idx])
        metrics[f"{dim}/n"] = float(len(idx))
        metrics[f"{dim}/accuracy"] = float(np.mean(truth == np.asarray([predicted[i] for i in idx])))
        if sum(train_counts.get(dim, [])):
            majority = SCORES[dim][int(np.argmax(train_counts[dim]))]
            metrics[f"{dim}/majority_accuracy"] = float(np.mean(truth == majority))
    for key in ("accuracy", "majority_accuracy"):
        values = [metrics[f"{d}/{key}"] for d in DIMENSIONS if f"{d}/{key}" in metrics]
        if values:
            metrics[f"mean/{key}"] = float(np.mean(values))
    return metrics


def accuracy_table(metrics: dict[str, float]) -> str:
    rows = [
        [
            d,
            int(metrics[f"{d}/n"]) if d != "mean" else "",
            metrics[f"{d}/accuracy"],
            metrics.get(f"{d}/majority_accuracy", float("nan")),
        ]
        for d in [*DIMENSIONS, "mean"]
        if f"{d}/accuracy" in metrics
    ]
    table = markdown_table(["dimension", "n", "accuracy", "majority acc."], rows)
    return table + truncated_note(metrics)


def harmless_metrics(records: Sequence[Record], scores: Sequence[int]) -> dict[str, float]:
    """Per dimension: n, harmless rate, harmless score; `overall`: their unweighted means over the dimensions present."""
    metrics: dict[str, float] = {}
    for dim, mine in labels_by_dimension(records, scores, DIMENSIONS).items():
        metrics[f"{dim}/n"] = float(len(mine))
        metrics[f"{dim}/harmless_rate"] = harmless_rate(mine)
        metrics[f"{dim}/harmless_score"] = harmless_score(mine)
    dims = [d for d in DIMENSIONS if f"{d}/n" in metrics]
    for key in ("harmless_rate", "harmless_score"):
        metrics[f"overall/{key}"] = float(np.mean([metrics[f"{d}/{key}"] for d in dims]))
    return metrics


def harmless_table(metrics: dict[str, float]) -> str:
    dims = [d for d in DIMENSIONS if f"{d}/n" in metrics]
    rows = [
        [d, int(metrics[f"{d}/n"]), 100 * metrics[f"{d}/harmless_rate"], metrics[f"{d}/harmless_score"]] for d in dims
    ]
    rows.append(["overall", "", 100 * metrics["overall/harmless_rate"], metrics["overall/harmless_score"]])
    table = markdown_table(["dimension", "n", "harmless rate (%)", "harmless score"], rows)
    return table + truncated_note(metrics)

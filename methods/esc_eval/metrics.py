"""ESC-RANK against human scores, per dimension, and the tables.

Accuracy and within-one accuracy (the paper's ACC and ACC_soft, |predicted - human| <= 1) are over all dialogues: an
unparseable output (-1) counts as a miss. Pearson and Spearman are over the dialogues with a parseable score (nan
with fewer than two, or when either side is constant); the unparseable share is reported beside them. The baseline
predicts, for every held-out dialogue, the score most frequent in the training scores.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

from common.results import format_number, markdown_table
from methods.esc_eval.formats import DIMENSIONS, UNPARSEABLE
from methods.esc_eval.rank import DIMS

RANK_KEYS = ("acc", "within1", "pearson", "spearman", "unparseable", "majority_acc", "majority_within1")


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson of the ranks, ties sharing their average rank."""
    return pearson(rankdata(x), rankdata(y)) if len(x) >= 2 else math.nan


def agreement(predicted: Sequence[int], human: Sequence[int]) -> dict[str, float]:
    """acc, within1, pearson, spearman and the unparseable share of one dimension."""
    n = len(human)
    parsed = [(p, h) for p, h in zip(predicted, human, strict=True) if p != UNPARSEABLE]
    return {
        "acc": sum(p == h for p, h in parsed) / n,
        "within1": sum(abs(p - h) <= 1 for p, h in parsed) / n,
        "pearson": pearson([p for p, _ in parsed], [h for _, h in parsed]),
        "spearman": spearman([p for p, _ in parsed], [h for _, h in parsed]),
        "unparseable": (n - len(parsed)) / n,
    }


def majority(train: Sequence[int], human: Sequence[int]) -> dict[str, float]:
    """The majority-class baseline: the most frequent training score for everything (ties: the smaller score)."""
    counts = Counter(train)
    label = min(counts, key=lambda s: (-counts[s], s))
    return {
        "majority_acc": sum(h == label for h in human) / len(human),
        "majority_within1": sum(abs(h - label) <= 1 for h in human) / len(human),
    }


def rank_metrics(
    predicted: dict[str, dict[str, int]],
    human: dict[str, dict[str, int]],
    train: dict[str, dict[str, int]],
    dims: Sequence[str],
) -> dict[str, float]:
    """rank/<dim>/<key> for every dimension and rank/mean/<key> over them."""
    out: dict[str, float] = {}
    keys = list(human)
    for dim in dims:
        gold = [human[k][dim] for k in keys]
        row = agreement([predicted[k][dim] for k in keys], gold)
        row.update(majority([s[dim] for s in train.values()], gold))
        out.update({f"rank/{dim}/{name}": value for name, value in row.items()})
    for name in RANK_KEYS:
        values = [out[f"rank/{dim}/{name}"] for dim in dims]
        out[f"rank/mean/{name}"] = float(np.mean(values))  # nan if a dimension's correlation is nan
    out["rank/dialogues"] = float(len(keys))
    return out


def model_scores(name: str, scores: Sequence[dict[str, int]], dims: Sequence[str]) -> dict[str, float]:
    """eval/<model>/<dim>: mean score over the dialogues with a parseable one; .../unparseable: the others' share."""
    out = {f"eval/{name}/dialogues": float(len(scores))}
    for dim in dims:
        values = [s[dim] for s in scores if s[dim] != UNPARSEABLE]
        out[f"eval/{name}/{dim}"] = float(np.mean(values)) if values else math.nan
        out[f"eval/{name}/{dim}/unparseable"] = (len(scores) - len(values)) / max(len(scores), 1)
    return out


def score_table(metrics: dict[str, float]) -> str:
    """Mean ESC-RANK score (0-4) per model under test and dimension, unparseable outputs counted beside."""
    models = sorted({k.split("/")[1] for k in metrics if k.startswith("eval/") and k.endswith("/dialogues")})
    if not models:
        return ""
    dims = [d for d in DIMENSIONS if f"eval/{models[0]}/{d}" in metrics]
    header = ["model", "dialogues", *[f"{d} ({DIMS[d].label})" for d in dims], "mean", "unparseable"]
    rows = []
    for m in models:
        values = [metrics[f"eval/{m}/{d}"] for d in dims]
        unparseable = np.mean([metrics[f"eval/{m}/{d}/unparseable"] for d in dims])
        scored = [v for v in values if not math.isnan(v)]
        mean = sum(scored) / len(scored) if scored else math.nan
        rows.append([m, int(metrics[f"eval/{m}/dialogues"]), *values, mean, float(unparseable)])
    return "ESC-RANK scores of the models under test (0-4, mean over dialogues)\n" + markdown_table(header, rows)


def agreement_table(metrics: dict[str, float]) -> str:
    """ESC-RANK against the held-out human scores, per dimension, beside the majority-class baseline."""
    dims = [d for d in DIMENSIONS if f"rank/{d}/acc" in metrics]
    if not dims:
        return ""
    header = ["dimension", "acc", "acc within 1", "pearson", "spearman", "unparseable", "majority acc"]
    keys = ("acc", "within1", "pearson", "spearman", "unparseable", "majority_acc")
    rows = [[f"{d} ({DIMS[d].label})", *[metrics[f"rank/{d}/{k}"] for k in keys]] for d in dims]
    rows.append(["mean", *[metrics[f"rank/mean/{k}"] for k in keys]])
    n = format_number(metrics.get("rank/dialogues", math.nan))
    return f"ESC-RANK vs human scores on {n} held-out dialogues\n" + markdown_table(header, rows)


def table(metrics: dict[str, float]) -> str:
    return "\n\n".join(t for t in (score_table(metrics), agreement_table(metrics)) if t)

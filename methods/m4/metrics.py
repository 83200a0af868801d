"""Per-gene AUC, F1, accuracy, sensitivity and specificity, mean +/- std over splits.

F1, accuracy, sensitivity and specificity are taken at threshold 0.5, as the official code, for comparability; with
rare mutations and no class weighting a model may call every slide negative there, so the same four are also given
at a threshold tuned per gene on the validation split (Youden's J), as `<metric>_tuned`, with `threshold_tuned`.

A gene whose evaluation set holds a single class has no ROC curve: its AUC is NaN and a note says so; the other
metrics are still computed. Means over genes and splits skip NaNs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.results import markdown_table, mean_std

METRICS = ("auc", "f1", "acc", "sens", "spec")
TUNED = ("f1_tuned", "acc_tuned", "sens_tuned", "spec_tuned", "threshold_tuned")


def _at_threshold(y_true: np.ndarray, y_prob: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    y_pred = (np.asarray(y_prob) >= threshold).astype(int)
    return {
        "f1": float(f1_score(y_true, y_pred, zero_division=0)),
        "acc": float(accuracy_score(y_true, y_pred)),
        "sens": float(recall_score(y_true, y_pred, pos_label=1, zero_division=0)) if (y_true == 1).any() else math.nan,
        "spec": float(recall_score(y_true, y_pred, pos_label=0, zero_division=0)) if (y_true == 0).any() else math.nan,
    }


def binary_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, threshold: float = 0.5, tuned: float | None = None
) -> tuple[dict[str, float], str | None]:
    """Metrics of one gene on one evaluation set (with `tuned`, also at that threshold), and a note when the AUC is
    undefined."""
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true).astype(int)
    classes = np.unique(y_true)
    note = None
    if len(classes) < 2:
        auc = math.nan
        note = f"only class {int(classes[0]) if len(classes) else '-'} present ({len(y_true)} slides): AUC undefined"
    else:
        auc = float(roc_auc_score(y_true, y_prob))
    out = {"auc": auc, **_at_threshold(y_true, y_prob, threshold)}
    if tuned is not None:
        out |= {f"{k}_tuned": v for k, v in _at_threshold(y_true, y_prob, tuned).items()}
        out["threshold_tuned"] = tuned
    return out, note


def tuned_threshold(y_true: np.ndarray, y_prob: np.ndarray, default: float = 0.5) -> float:
    """The threshold maximising Youden's J (sensitivity + specificity - 1) on a validation set; `default` when the
    set holds one class or no threshold beats chance."""
    from sklearn.metrics import roc_curve

    y_true = np.asarray(y_true).astype(int)
    if len(np.unique(y_true)) < 2:
        return default
    fpr, tpr, thresholds = roc_curve(y_true, y_prob)
    best = int(np.argmax(tpr - fpr))
    return float(thresholds[best]) if tpr[best] > fpr[best] and np.isfinite(thresholds[best]) else default


def nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def nanstd(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.std(finite)) if finite else math.nan


def gene_table(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    genes: Sequence[str],
    threshold: float = 0.5,
    tuned: Sequence[float] | None = None,
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """{gene: metrics} for one split ([n, T] arrays; `tuned`: a threshold per gene), and notes for genes whose AUC is
    undefined."""
    table, notes = {}, []
    for k, gene in enumerate(genes):
        table[gene], note = binary_metrics(y_true[:, k], y_prob[:, k], threshold, tuned[k] if tuned else None)
        if note:
            notes.append(f"{gene}: {note}")
    return table, notes


def summarize(per_split: Sequence[dict[str, dict[str, float]]], prefix: str) -> dict[str, float]:
    """Flat `<prefix>/<gene>/<metric>_mean|_std` over splits, plus `<prefix>/mean/<metric>_mean|_std`, where the
    mean over genes is taken within each split first (as the official test_auc_f1_acc.csv)."""
    genes = list(per_split[0])
    metrics = [m for m in (*METRICS, *TUNED) if all(m in s[g] for s in per_split for g in genes)]
    out: dict[str, float] = {}
    for gene in genes:
        for m in metrics:
            vals = [s[gene][m] for s in per_split]
            out[f"{prefix}/{gene}/{m}_mean"] = nanmean(vals)
            out[f"{prefix}/{gene}/{m}_std"] = nanstd(vals)
    for m in metrics:
        per_split_mean = [nanmean([s[g][m] for g in genes]) for s in per_split]
        out[f"{prefix}/mean/{m}_mean"] = nanmean(per_split_mean)
        out[f"{prefix}/mean/{m}_std"] = nanstd(per_split_mean)
    return out


def auc_table(metrics: dict[str, float], subset: str = "test") -> str:
    """The paper's table: gene x model AUC, mean ± std over splits, then the mean over genes; read off the flat
    `<model>/<subset>/<gene>/auc_mean|_std` metrics of `summarize`."""
    found = [
        k.split("/")[:3] for k in metrics if k.endswith("/auc_mean") and k.count("/") == 3 and k.split("/")[1] == subset
    ]
    models = list(dict.fromkeys(m for m, _, _ in found))
    genes = [g for g in dict.fromkeys(g for _, _, g in found) if g != "mean"] + ["mean"]

    def cell(model: str, gene: str) -> str:
        key = f"{model}/{subset}/{gene}/auc"
        return mean_std(metrics.get(f"{key}_mean", math.nan), metrics.get(f"{key}_std", math.nan))

    rows = [[g, *(cell(m, g) for m in models)] for g in genes]
    return f"per-gene {subset} AUC, mean ± std over splits\n\n" + markdown_table(["gene", *models], rows)


def roc_plots(curves: dict[str, list[tuple[np.ndarray, np.ndarray]]], out_dir: Path, title: str) -> list[Path]:
    """One PNG per gene with one ROC curve per split: curves[gene] = [(y_true, y_prob), ...]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for gene, runs in curves.items():
        fig, ax = plt.subplots(figsize=(4, 4))
        for i, (y_true, y_prob) in enumerate(runs):
            if len(np.unique(y_true)) < 2:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fpr, tpr, _ = roc_curve(y_true, y_prob)
            ax.plot(fpr, tpr, lw=1, label=f"split {i}")
        ax.plot([0, 1], [0, 1], "k--", lw=0.5)
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"{title}: {gene}", xlim=(0, 1), ylim=(0, 1))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
        path = out_dir / f"roc_{gene}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths

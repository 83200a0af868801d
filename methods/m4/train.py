"""Training, scoring and collecting: every model of `train.models` on every split, the best epoch by mean validation
AUC (as the official code), then per-gene test metrics, mean ± std over splits: at threshold 0.5 (official) and at a
per-gene threshold tuned on the split's validation slides (kept in model.json, so `eval` scores the same way).

A trained model lives in `<run>/<model>/<split>[/<gene>]/model/` (safetensors + model.json with its build arguments,
genes, split and test slides); M4's experts are saved in the official one-after-another layout whatever form trained.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.checkpoint import load_module, read_meta, save_module
from common.errors import UserError
from common.registry import create
from methods.m4 import data as m4data
from methods.m4 import metrics as m4metrics
from methods.m4.config import M4Config
from methods.m4.model import M4, SINGLE_TASK, count_parameters, model_kwargs, transfer_experts


@dataclass
class ModelRun:
    """One trained model: which architecture, which genes (columns), the split, and its output dir."""

    name: str
    kwargs: dict
    gene_cols: list[int]
    split: m4data.Split
    out_dir: Path
    thresholds: list[float] | None = None  # per gene column, tuned on validation; None for models saved before them


Scored = dict[str, list[tuple[ModelRun, np.ndarray]]]  # model name -> (run, test probabilities) per split (and gene)


def bce_loss(pos_weight: torch.Tensor | None = None):
    """BCE per gene summed over genes with equal weight (official), computed from the logits (stable, and a diverging
    run reaches the trainer's non-finite stop); `pos_weight` ([T]) weights the positive terms."""

    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = batch
        z = model(x, logits=True).float()
        weight = None if pos_weight is None else pos_weight.to(z.device)
        return F.binary_cross_entropy_with_logits(z, y, pos_weight=weight, reduction="sum"), {}

    return loss


def pos_weights(setting: str | None, y_train: np.ndarray) -> torch.Tensor | None:
    """train.pos_weight for the genes of y_train ([n, T]): None, negatives/positives per gene, or one number."""
    if setting is None:
        return None
    if setting != "balanced":
        return torch.full((y_train.shape[1],), float(setting))
    positives = y_train.sum(0)
    # A gene without positives in training has nothing to up-weight.
    return torch.from_numpy(np.where(positives > 0, (len(y_train) - positives) / np.maximum(positives, 1), 1.0)).float()


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: m4data.BagDataset) -> np.ndarray:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs = np.stack([model(dataset.features(i).to(device)).float().cpu().numpy() for i in range(len(dataset))])
    model.train(was_training)
    return probs


def score(
    model: torch.nn.Module, labels: m4data.Labels, rows: list[int], cols: list[int], features_dir: Path
) -> np.ndarray:
    return predict(model, m4data.BagDataset(labels, rows, features_dir, cols))


def _val_score(model: torch.nn.Module, dataset: m4data.BagDataset, genes: list[str]) -> dict[str, float]:
    probs = predict(model, dataset)
    table, _ = m4metrics.gene_table(dataset.labels.y[dataset.rows][:, dataset.cols], probs, genes)
    mean_auc = m4metrics.nanmean([t["auc"] for t in table.values()])
    # With no defined AUC every epoch ties at 0.
    return {"val_mean_auc": 0.0 if math.isnan(mean_auc) else mean_auc}


def fit_model(cfg: M4Config, run: ModelRun, labels: m4data.Labels, features_dir: Path) -> torch.nn.Module:
    from common.loggers import make_logger
    from common.seeding import seeded
    from common.trainer import Task, fit

    genes = [labels.genes[c] for c in run.gene_cols]
    train_ds = m4data.BagDataset(labels, run.split.train, features_dir, run.gene_cols, cfg.train.cache_features)
    val_ds = m4data.BagDataset(labels, run.split.val, features_dir, run.gene_cols, cfg.train.cache_features)
    # The same initial weights (and dropout draws) for a model on every split, from the seed alone.
    with seeded(cfg.seed, f"m4/{run.name}"):
        model = create("m4.model", run.name, **run.kwargs)
    weight = pos_weights(cfg.train.pos_weight, labels.y[run.split.train][:, run.gene_cols])
    # Without checkpoints short runs are cheaper to redo than to checkpoint every epoch.
    never = {} if cfg.train.save_checkpoints else {"save_every": 10**12}
    trainer = dataclasses.replace(cfg.trainer, best_metric="val_mean_auc", best_mode="max", **never)
    task = Task(
        model=model,
        train_data=train_ds,
        collate=m4data.collate_bag,
        loss=bce_loss(weight),
        evaluate=lambda m: _val_score(m, val_ds, genes),
    )
    logger = make_logger(cfg.logger, run.out_dir)
    try:
        with seeded(cfg.seed, f"m4/{run.name}/train"):
            return fit(task, trainer, run.out_dir, logger).model
    finally:
        logger.finish()


def save_model(model: torch.nn.Module, run: ModelRun, genes: list[str], test_slides: list[str]) -> Path:
    """Weights in the official state-dict layout (M4 experts one after another) + model.json, in <out_dir>/model."""
    if isinstance(model, M4):
        model = transfer_experts(model, batched=False)
    return save_module(
        model,
        run.out_dir / "model",
        "m4.model",
        run.name,
        run.kwargs,
        genes=[genes[c] for c in run.gene_cols],
        split=run.split.name,
        test_slides=test_slides,
        thresholds=run.thresholds,
    )


def load_model(path: Path) -> tuple[torch.nn.Module, dict]:
    """A saved model, M4's experts back in the form it was built with."""
    batched = read_meta(path)["kwargs"].get("batched")
    model, meta = load_module(path, **({"batched": False} if batched is not None else {}))
    return (transfer_experts(model, batched=True) if batched else model), meta


def train_models(
    cfg: M4Config, labels: m4data.Labels, splits: list[m4data.Split], features_dir: Path, feat_dim: int, run_dir: Path
) -> tuple[Scored, dict[str, float]]:
    """Every model on every split (single-task models once per gene), saved and scored on the split's test slides."""
    all_cols = list(range(len(labels.genes)))
    scored: Scored = {}
    metrics: dict[str, float] = {}
    for name in cfg.train.models:
        per_gene = name in SINGLE_TASK
        started = time.perf_counter()
        for split in splits:
            for cols in [[c] for c in all_cols] if per_gene else [all_cols]:
                sub = f"{split.name}/{labels.genes[cols[0]]}" if per_gene else split.name
                run = ModelRun(
                    name, model_kwargs(name, cfg.mil, feat_dim, len(cols)), cols, split, run_dir / name / sub
                )
                model = fit_model(cfg, run, labels, features_dir)
                val = score(model, labels, split.val, cols, features_dir)
                y_val = labels.y[split.val][:, cols]
                run.thresholds = [m4metrics.tuned_threshold(y_val[:, k], val[:, k]) for k in range(len(cols))]
                save_model(model, run, labels.genes, [labels.slide_ids[r] for r in split.test])
                scored.setdefault(name, []).append((run, score(model, labels, split.test, cols, features_dir)))
        metrics[f"{name}/train_seconds"] = time.perf_counter() - started
        tasks = 1 if per_gene else len(all_cols)
        metrics[f"{name}/parameters"] = float(
            count_parameters(create("m4.model", name, **model_kwargs(name, cfg.mil, feat_dim, tasks)))
        )
        print(f"{name}: trained on {len(splits)} splits in {metrics[f'{name}/train_seconds']:.1f} s")
    return scored, metrics


def collect(scored: Scored, labels: m4data.Labels, threshold: float, run_dir: Path) -> dict[str, float]:
    """Per model: per-split gene tables -> mean/std metrics, predictions CSV, ROC PNGs; notes on undefined AUCs are
    printed. Runs of one model on the same split (single-task ABMIL, one per gene) are merged into one table first."""
    import pandas as pd

    out: dict[str, float] = {}
    for name, items in scored.items():
        by_split: dict[str, dict[int, np.ndarray]] = {}
        rows_of: dict[str, list[int]] = {}
        tuned: dict[str, dict[int, float]] = {}
        for run, probs in items:
            rows_of[run.split.name] = run.split.test
            for k, c in enumerate(run.gene_cols):
                by_split.setdefault(run.split.name, {})[c] = probs[:, k]
                if run.thresholds is not None:
                    tuned.setdefault(run.split.name, {})[c] = run.thresholds[k]
        per_split, frames = [], []
        curves: dict[str, list] = {g: [] for g in labels.genes}
        for split_name, cols in by_split.items():
            order = sorted(cols)
            genes, rows = [labels.genes[c] for c in order], rows_of[split_name]
            y, probs = labels.y[rows][:, order], np.stack([cols[c] for c in order], axis=1)
            cuts = tuned.get(split_name, {})
            thresholds = [cuts[c] for c in order] if len(cuts) == len(order) else None
            table, notes = m4metrics.gene_table(y, probs, genes, threshold, thresholds)
            per_split.append(table)
            for note in notes:
                print(f"note: {name} {split_name}: {note}")
            frame = pd.DataFrame(
                {
                    "split": split_name,
                    "case_id": [labels.case_ids[r] for r in rows],
                    "slide_id": [labels.slide_ids[r] for r in rows],
                }
            )
            for k, g in enumerate(genes):
                curves[g].append((y[:, k], probs[:, k]))
                frame[f"{g}_prob"], frame[f"{g}_label"] = probs[:, k], y[:, k]
            frames.append(frame)
        (run_dir / name).mkdir(parents=True, exist_ok=True)
        pd.concat(frames).to_csv(run_dir / name / "predictions_test.csv", index=False)
        m4metrics.roc_plots({g: c for g, c in curves.items() if c}, run_dir / name / "roc", name)
        out.update(m4metrics.summarize(per_split, f"{name}/test"))
    return out


def check_width(meta: dict, model_dir: Path, feat_dim: int, features_dir: Path) -> None:
    """Features of another encoder than the model was trained on: one line naming both widths and dirs."""
    trained = meta["kwargs"]["feat_input"]
    if trained != feat_dim:
        raise UserError(
            f"the features in {features_dir} are {feat_dim}-d but {model_dir} was trained on {trained}-d features: "
            "give the data.* / extract.* settings (or data.features_dir) of the features it was trained on"
        )


def score_saved(source: Path, labels: m4data.Labels, features_dir: Path, feat_dim: int) -> Scored:
    """The saved best models of a train run, scored again on their split's test slides."""
    index = {s: i for i, s in enumerate(labels.slide_ids)}
    scored: Scored = {}
    for meta_path in sorted(source.glob("*/**/model/model.json")):
        check_width(read_meta(meta_path.parent), meta_path.parent, feat_dim, features_dir)
        model, meta = load_model(meta_path.parent)
        missing = [s for s in meta["test_slides"] if s not in index]
        if missing:
            raise UserError(f"test slides of {meta_path.parent} are not labelled: {', '.join(missing[:10])}")
        rows = [index[s] for s in meta["test_slides"]]
        cols = [labels.genes.index(g) for g in meta["genes"]]
        split = m4data.Split(meta["split"], [], [], rows)
        run = ModelRun(meta["name"], meta["kwargs"], cols, split, meta_path.parent, meta.get("thresholds"))
        scored.setdefault(meta["name"], []).append((run, score(model, labels, rows, cols, features_dir)))
    if not scored:
        raise UserError(f"{source}: no trained models found")
    return scored

"""Commands of `python -m methods.m4`: tile, extract, train, eval, heatmap.

With no data configured every command works on the synthetic cohort (methods/m4/cohort.py); `train` then runs the
whole pipeline: cohort, tiling, extraction, M4 and the baselines.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from common.cli import latest_run
from common.errors import UserError
from common.io import write_json
from common.items import shard_items, summarize
from methods.m4 import cohort, kernels
from methods.m4 import train as m4train
from methods.m4.config import M4Config
from methods.m4.data import make_splits, split_records
from methods.m4.extract import feature_width
from methods.m4.metrics import auc_table
from methods.m4.tiling import list_slides


def _shard(cfg: M4Config, paths: cohort.Paths) -> list[Path]:
    return shard_items(list_slides(paths.slides()), cfg.shard, cfg.num_shards)


def tile(cfg: M4Config, run_dir: Path) -> dict[str, float]:
    paths = cohort.cohort_paths(cfg)
    return summarize(cohort.tile_slides(cfg, paths, _shard(cfg, paths)), run_dir, "tile", cfg.shard, cfg.num_shards)


def extract(cfg: M4Config, run_dir: Path) -> dict[str, float]:
    paths = cohort.cohort_paths(cfg)
    return summarize(
        cohort.extract_slides(cfg, paths, _shard(cfg, paths)), run_dir, "extract", cfg.shard, cfg.num_shards
    )


def train(cfg: M4Config, run_dir: Path) -> dict[str, float]:
    paths = cohort.cohort_paths(cfg)
    metrics: dict[str, float] = {}
    if cohort.is_synthetic(cfg):
        slides = list_slides(paths.slides())
        metrics.update(summarize(cohort.tile_slides(cfg, paths, slides), run_dir, "tile"))
        metrics.update(summarize(cohort.extract_slides(cfg, paths, slides), run_dir, "extract"))
    labels, feat_dim = cohort.labels_with_features(cfg, paths)
    if cfg.train.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(cfg.train.cpu_threads)  # after extraction, which does use every core
    kernels.use(cfg.train.cpu_gemm)
    splits = make_splits(labels, cfg.train)
    print(
        f"train: {len(labels.slide_ids)} slides, {len(set(labels.case_ids))} patients, genes {', '.join(labels.genes)}, "
        f"{feat_dim}-d features, {len(splits)} splits ({cfg.train.protocol})"
    )
    write_json(run_dir / "splits.json", split_records(labels, splits))
    scored, trained = m4train.train_models(cfg, labels, splits, paths.features_dir, feat_dim, run_dir)
    return {**metrics, **trained, **m4train.collect(scored, labels, cfg.train.threshold, run_dir)}


def train_run(explicit: str | None) -> Path:
    """An explicit train run dir, else the latest one."""
    if explicit is None:
        return latest_run("m4", "train", marker="splits.json")
    if not (Path(explicit) / "splits.json").is_file():
        raise UserError(f"{explicit}: not a train run dir (no splits.json)")
    return Path(explicit)


def eval(cfg: M4Config, run_dir: Path) -> dict[str, float]:  # noqa: A001 - the command is called eval
    """Re-score the saved best models of a train run on each split's test patients (features from data.*)."""
    source = train_run(cfg.eval.run_dir)
    paths = cohort.cohort_paths(cfg, make_synthetic=False)
    labels, feat_dim = cohort.labels_with_features(cfg, paths)
    scored = m4train.score_saved(source, labels, paths.features_dir, feat_dim)
    metrics = m4train.collect(scored, labels, cfg.train.threshold, run_dir)
    print("\n" + auc_table(metrics))
    return metrics


def heatmap(cfg: M4Config, run_dir: Path) -> dict[str, float]:
    from methods.m4.heatmap import attention_heatmaps

    h = cfg.heatmap
    source = train_run(h.run_dir)
    splits = json.loads((source / "splits.json").read_text())
    if h.split >= len(splits):
        raise UserError(f"heatmap.split: {h.split} not in 0..{len(splits) - 1}")
    model_dir = source / h.model / splits[h.split]["name"] / "model"
    if not (model_dir / "model.json").is_file():
        raise UserError(f"{model_dir}: no trained {h.model} model (heatmaps need a multi-gene model: m4 or mmoe)")
    model, meta = m4train.load_model(model_dir)
    paths = cohort.cohort_paths(cfg, make_synthetic=False)
    slides = list(h.slides) or splits[h.split]["test"][: h.max_slides]
    width = feature_width(paths.features_dir, slides)
    if width is not None:
        m4train.check_width(meta, model_dir, width, paths.features_dir)
    written = attention_heatmaps(
        model, meta["genes"], slides, paths.slides(), paths.features_dir, run_dir, h.thumbnail_size
    )
    print(f"heatmap: {len(written)} PNGs in {run_dir}")
    return {"heatmap/pngs": float(len(written))}

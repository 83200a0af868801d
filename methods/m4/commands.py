"""Commands of `python -m methods.m4`: tile, extract, train, eval, heatmap.

With no data configured (data.slides_dir and data.features_dir null) every command works on the synthetic cohort,
generated once under <cache_dir>/m4/synthetic/; `train` then runs the whole pipeline: cohort, tiling, extraction,
M4 and the baselines.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from common.errors import UserError
from common.io import write_json
from common.shard import shard_items, shard_path
from methods.m4 import data as m4data
from methods.m4 import metrics as m4metrics
from methods.m4.model import M4, build_model, count_parameters, transfer_experts

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# Where things are


@dataclass
class Paths:
    slides_dir: Path | None  # None when only features are given
    labels_csv: Path | None
    patches_dir: Path
    features_dir: Path


def _synthetic_root(cfg: DictConfig) -> Path:
    s = cfg.synthetic
    name = f"{s.n_patients}p_{s.height}x{s.width}_seed{s.seed}_{'-'.join(s.genes)}"
    return Path(cfg.cache_dir) / "m4" / "synthetic" / name


def _feature_tag(cfg: DictConfig) -> str:
    weights = cfg.extract.weights
    tag = weights if weights in ("hub", "random") else Path(weights).stem
    return f"{cfg.extract.backbone}_{tag}_{cfg.extract.input_size}px"


def resolve_paths(cfg: DictConfig, make_synthetic: bool = True) -> Paths:
    d = cfg.data
    synthetic = d.slides_dir is None and d.features_dir is None
    if synthetic:
        root = _synthetic_root(cfg)
        if make_synthetic:
            from methods.m4.slides import make_cohort

            s = cfg.synthetic
            print(f"synthetic cohort: {root}")
            make_cohort(root, s.n_patients, list(s.genes), s.height, s.width, seed=s.seed)
        slides_dir, labels = root / "slides", root / "labels.csv"
        work = Path(d.work_dir) if d.work_dir else root
    else:
        slides_dir = Path(d.slides_dir) if d.slides_dir else None
        labels = Path(d.labels_csv) if d.labels_csv else None
        if d.work_dir is None and d.features_dir is None:
            raise UserError("data.work_dir (where patches/ and features/ go) is not set")
        work = Path(d.work_dir) if d.work_dir else Path(d.features_dir).parent
    features = Path(d.features_dir) if d.features_dir else work / "features" / _feature_tag(cfg)
    return Paths(slides_dir, labels, work / "patches", features)


def _need_slides(paths: Paths) -> Path:
    if paths.slides_dir is None:
        raise UserError("data.slides_dir is not set")
    return paths.slides_dir


def _finish(run_dir: Path, command: str, outcomes: list, shard: int, num_shards: int) -> dict[str, float]:
    """Write the per-slide summary; raise (non-zero exit) if any slide failed, after the others finished."""
    rows = [asdict(o) for o in outcomes]
    write_json(shard_path(run_dir / f"{command}_summary.json", shard, num_shards), rows)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "empty", "failed")}
    print(f"{command}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    for r in rows:
        if r["status"] in ("empty", "failed"):
            print(f"  {r['status']}: {r['slide_id']}: {r['message']}")
    if counts["failed"]:
        failed = [f"{r['slide_id']} ({r['message']})" for r in rows if r["status"] == "failed"]
        raise UserError(f"{command}: {counts['failed']} of {len(rows)} slides failed: {'; '.join(failed)[:500]} "
                        f"(details: {run_dir / f'{command}_summary.json'})")
    return {f"{command}/{k}": float(v) for k, v in counts.items()}


# ---------------------------------------------------------------------------------------------------------------------
# tile


@dataclass
class TileOutcome:
    slide_id: str
    status: str
    n_patches: int = 0
    message: str = ""


def run_tile(cfg: DictConfig, paths: Paths) -> list[TileOutcome]:
    import openslide

    from methods.m4.tiling import TileParams, list_slides, slide_id_of, tile_slide, write_coords

    params = TileParams(**OmegaConf.to_container(cfg.tile))
    slides = shard_items(list_slides(_need_slides(paths)), cfg.shard, cfg.num_shards)
    outcomes = []
    for path in slides:
        sid = slide_id_of(path)
        out = paths.patches_dir / f"{sid}.h5"
        if out.is_file():
            outcomes.append(TileOutcome(sid, "skipped", message="coordinates already written"))
            continue
        try:
            result = tile_slide(path, params, cfg.data.slide_mpp)
            with openslide.OpenSlide(str(path)) as slide:
                write_coords(out, result, slide)
        except UserError:
            raise
        except Exception as e:  # unreadable or corrupt slide: report it, carry on with the others
            outcomes.append(TileOutcome(sid, "failed", message=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
            continue
        if len(result.coords) == 0:
            log.warning("%s: no tissue patches", sid)
            outcomes.append(TileOutcome(sid, "empty", message="no tissue found; zero patches"))
        else:
            outcomes.append(TileOutcome(sid, "done", len(result.coords)))
    return outcomes


def tile(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    return _finish(run_dir, "tile", run_tile(cfg, resolve_paths(cfg)), cfg.shard, cfg.num_shards)


# ---------------------------------------------------------------------------------------------------------------------
# extract


def run_extract(cfg: DictConfig, paths: Paths) -> list:
    from methods.m4.extract import build_backbone, extract as extract_features, plan_jobs
    from methods.m4.tiling import list_slides

    e = cfg.extract
    slides = shard_items(list_slides(_need_slides(paths)), cfg.shard, cfg.num_shards)
    jobs, outcomes = plan_jobs(slides, paths.patches_dir, paths.features_dir)
    if jobs:
        backbone = build_backbone(e.backbone, e.weights, e.allow_random_weights)
        print(f"extract: {len(jobs)} slides, {sum(len(j.coords) for j in jobs)} patches, {e.backbone} ({backbone.dim}-d) -> {paths.features_dir}")
        outcomes += extract_features(jobs, backbone, paths.features_dir, e.input_size, e.batch_size, e.num_workers, e.device,
                                     progress=cfg.trainer.progress)
    return outcomes


def extract(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    return _finish(run_dir, "extract", run_extract(cfg, resolve_paths(cfg)), cfg.shard, cfg.num_shards)


# ---------------------------------------------------------------------------------------------------------------------
# train


def _splits(cfg: DictConfig, labels: m4data.Labels) -> list[m4data.Split]:
    t = cfg.train
    if t.protocol == "official":
        return m4data.official_splits(labels, t.n_splits, t.test_size, t.val_size, t.split_seed)
    if t.protocol == "kfold":
        return m4data.kfold_splits(labels, t.n_splits, t.val_size, t.split_seed, t.stratify_gene)
    raise UserError(f"train.protocol: '{t.protocol}' is neither official nor kfold")


def bce_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE per gene on the towers' probabilities, summed over genes with equal weight (official)."""
    x, y = batch
    return F.binary_cross_entropy(model(x).float(), y, reduction="sum"), {}


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: m4data.BagDataset) -> np.ndarray:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs = np.stack([model(dataset.features(i).to(device)).float().cpu().numpy() for i in range(len(dataset))])
    model.train(was_training)
    return probs


def _val_score(model: torch.nn.Module, dataset: m4data.BagDataset, genes: list[str]) -> dict[str, float]:
    probs = predict(model, dataset)
    y = dataset.labels.y[dataset.rows][:, dataset.cols]
    table, _ = m4metrics.gene_table(y, probs, genes)
    mean_auc = m4metrics.nanmean([t["auc"] for t in table.values()])
    # Best epoch by mean validation AUC, as the official code; with no defined AUC every epoch ties at 0.
    return {"val_mean_auc": 0.0 if math.isnan(mean_auc) else mean_auc}


@dataclass
class ModelRun:
    """One trained model: which architecture, which genes (columns), the split, and its output dir."""

    name: str
    kwargs: dict
    gene_cols: list[int]
    split: m4data.Split
    out_dir: Path


def _model_kwargs(cfg: DictConfig, name: str, feat_dim: int, tasks: int) -> dict:
    m = cfg.model
    if name == "m4":
        return {"feat_input": feat_dim, "tasks": tasks, "num_expert": m.num_expert, "hidden": m.hidden, "batched": m.batched_experts}
    if name == "mmoe":
        return {"feat_input": feat_dim, "tasks": tasks, "num_expert": m.num_expert, "hidden": m.hidden}
    if name == "amil":
        return {"feat_input": feat_dim, "hidden": m.hidden}
    raise UserError(f"train.models: unknown model '{name}' (m4, mmoe, amil)")


def save_model(model: torch.nn.Module, run: ModelRun, genes: list[str], test_slides: list[str]) -> None:
    """Weights as safetensors in the official state-dict layout (M4 experts one after another) + model.json."""
    from safetensors.torch import save_file

    if isinstance(model, M4):
        model = transfer_experts(model, batched=False)
    run.out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, run.out_dir / "model.safetensors")
    meta = {"name": run.name, "kwargs": run.kwargs, "genes": [genes[c] for c in run.gene_cols],
            "split": run.split.name, "test_slides": test_slides}
    write_json(run.out_dir / "model.json", meta)


def load_model(out_dir: Path) -> tuple[torch.nn.Module, dict]:
    from safetensors.torch import load_file

    meta_path = out_dir / "model.json"
    if not meta_path.is_file():
        raise UserError(f"{out_dir}: no model.json (not a trained model directory)")
    meta = json.loads(meta_path.read_text())
    kwargs = dict(meta["kwargs"])
    batched = kwargs.pop("batched", None)
    model = build_model(meta["name"], **kwargs, **({"batched": False} if batched is not None else {}))
    model.load_state_dict(load_file(out_dir / "model.safetensors"))
    if batched:
        model = transfer_experts(model, batched=True)
    return model.eval(), meta


def fit_model(cfg: DictConfig, run: ModelRun, labels: m4data.Labels, features_dir: Path, feat_dim: int) -> torch.nn.Module:
    from accelerate.utils import set_seed

    from common.loggers import make_logger
    from common.trainer import Task, fit

    genes = [labels.genes[c] for c in run.gene_cols]
    cache = cfg.train.cache_features
    train_ds = m4data.BagDataset(labels, run.split.train, features_dir, run.gene_cols, cache)
    val_ds = m4data.BagDataset(labels, run.split.val, features_dir, run.gene_cols, cache)
    set_seed(cfg.seed)  # the same initial weights for a model on every split
    model = build_model(run.name, **run.kwargs)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["best_metric"] = "val_mean_auc"
    trainer_cfg["best_mode"] = "max"
    if not cfg.train.save_checkpoints:
        trainer_cfg["save_every"] = 10**12  # never: short runs are cheaper to redo than to checkpoint every epoch
    task = Task(model=model, train_data=train_ds, collate=m4data.collate_bag, loss=bce_loss,
                evaluate=lambda m: _val_score(m, val_ds, genes))
    logger = make_logger(cfg.logger, run.out_dir)
    try:
        result = fit(task, trainer_cfg, run.out_dir, logger)
    finally:
        logger.finish()
    return result.model


def _score(model: torch.nn.Module, labels: m4data.Labels, rows: list[int], cols: list[int], features_dir: Path) -> np.ndarray:
    return predict(model, m4data.BagDataset(labels, rows, features_dir, cols))


def _collect(runs: dict[str, list[tuple[ModelRun, np.ndarray]]], labels: m4data.Labels, cfg: DictConfig,
             run_dir: Path, subset: str) -> tuple[dict[str, float], list[str]]:
    """Per model: per-split gene tables -> mean/std metrics, predictions CSV, ROC PNGs. Runs of one model on the same
    split (single-task AMIL, one per gene) are merged into one table first."""
    import pandas as pd

    out: dict[str, float] = {}
    notes: list[str] = []
    for name, items in runs.items():
        by_split: dict[str, dict[int, np.ndarray]] = {}
        rows_of: dict[str, list[int]] = {}
        for run, probs in items:
            rows = run.split.test if subset == "test" else list(range(len(labels.slide_ids)))
            rows_of[run.split.name] = rows
            for k, c in enumerate(run.gene_cols):
                by_split.setdefault(run.split.name, {})[c] = probs[:, k]
        per_split, frames = [], []
        curves: dict[str, list] = {g: [] for g in labels.genes}
        for split_name, cols in by_split.items():
            order = sorted(cols)
            genes = [labels.genes[c] for c in order]
            rows = rows_of[split_name]
            y = labels.y[rows][:, order]
            probs = np.stack([cols[c] for c in order], axis=1)
            table, split_notes = m4metrics.gene_table(y, probs, genes, cfg.train.threshold)
            per_split.append(table)
            notes += [f"{name} {split_name}: {n}" for n in split_notes]
            for k, g in enumerate(genes):
                curves[g].append((y[:, k], probs[:, k]))
            frame = pd.DataFrame({"split": split_name, "case_id": [labels.case_ids[r] for r in rows],
                                  "slide_id": [labels.slide_ids[r] for r in rows]})
            for k, g in enumerate(genes):
                frame[f"{g}_prob"], frame[f"{g}_label"] = probs[:, k], y[:, k]
            frames.append(frame)
        pd.concat(frames).to_csv(run_dir / name / f"predictions_{subset}.csv", index=False)
        m4metrics.roc_plots({g: c for g, c in curves.items() if c}, run_dir / name / "roc", name)
        out.update(m4metrics.summarize(per_split, f"{name}/{subset}"))
    return out, notes


def _print_table(metrics: dict[str, float], models: list[str], genes: list[str], subset: str) -> None:
    print(f"\nper-gene {subset} AUC, mean ± std over splits")
    print(f"{'gene':<10}" + "".join(f"{m:>18}" for m in models))
    for g in [*genes, "mean"]:
        cells = []
        for m in models:
            mean, std = metrics.get(f"{m}/{subset}/{g}/auc_mean", math.nan), metrics.get(f"{m}/{subset}/{g}/auc_std", math.nan)
            cells.append(f"{mean:.3f} ± {std:.3f}")
        print(f"{g:<10}" + "".join(f"{c:>18}" for c in cells))


def labels_with_features(cfg: DictConfig, paths: Paths) -> m4data.Labels:
    """The labels, less slides tiled here with no tissue (no features by design, left out with a warning); every
    remaining slide must have features."""
    from methods.m4.tiling import read_coords

    if paths.labels_csv is None:
        raise UserError("data.labels_csv is not set")
    labels = m4data.read_labels(paths.labels_csv, list(cfg.data.genes))
    coords = {s: paths.patches_dir / f"{s}.h5" for s in labels.slide_ids}
    empty = {s for s, f in coords.items() if f.is_file() and len(read_coords(f).coords) == 0}
    if empty:
        log.warning("%d labelled slides have no tissue patches and are left out: %s", len(empty), ", ".join(sorted(empty)[:10]))
        labels = m4data.without_slides(labels, empty)
    m4data.check_features(labels, paths.features_dir)
    return labels


def _prepare(cfg: DictConfig) -> tuple[m4data.Labels, Paths, int]:
    synthetic = cfg.data.slides_dir is None and cfg.data.features_dir is None
    paths = resolve_paths(cfg)
    if synthetic:
        for step, fn in (("tile", run_tile), ("extract", run_extract)):
            outcomes = fn(cfg, paths)
            if any(o.status == "failed" for o in outcomes):
                raise UserError(f"synthetic cohort: {step} failed: {[o for o in outcomes if o.status == 'failed'][:3]}")
    labels = labels_with_features(cfg, paths)
    from methods.m4.extract import load_features

    feat_dim = load_features(paths.features_dir, labels.slide_ids[0]).shape[1]
    return labels, paths, feat_dim


def train(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    labels, paths, feat_dim = _prepare(cfg)
    if cfg.train.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(cfg.train.cpu_threads)  # after extraction, which does use every core
    splits = _splits(cfg, labels)
    print(f"train: {len(labels.slide_ids)} slides, {len(set(labels.case_ids))} patients, genes {', '.join(labels.genes)}, "
          f"{feat_dim}-d features, {len(splits)} splits ({cfg.train.protocol})")
    write_json(run_dir / "splits.json", [
        {"name": s.name, **{part: [labels.slide_ids[r] for r in getattr(s, part)] for part in ("train", "val", "test")}}
        for s in splits
    ])
    all_cols = list(range(len(labels.genes)))
    results: dict[str, list[tuple[ModelRun, np.ndarray]]] = {}
    metrics: dict[str, float] = {}
    for name in cfg.train.models:
        per_gene = name == "amil"
        started = time.perf_counter()
        for split in splits:
            for cols in ([[c] for c in all_cols] if per_gene else [all_cols]):
                sub = split.name if not per_gene else f"{split.name}/{labels.genes[cols[0]]}"
                run = ModelRun(name, _model_kwargs(cfg, name, feat_dim, len(cols)), cols, split, run_dir / name / sub)
                model = fit_model(cfg, run, labels, paths.features_dir, feat_dim)
                save_model(model, run, labels.genes, [labels.slide_ids[r] for r in split.test])
                results.setdefault(name, []).append((run, _score(model, labels, split.test, cols, paths.features_dir)))
        metrics[f"{name}/train_seconds"] = time.perf_counter() - started
        metrics[f"{name}/parameters"] = float(count_parameters(build_model(name, **_model_kwargs(cfg, name, feat_dim, 1 if per_gene else len(all_cols)))))
        print(f"{name}: trained on {len(splits)} splits in {metrics[f'{name}/train_seconds']:.1f} s")
    scores, notes = _collect(results, labels, cfg, run_dir, "test")
    metrics.update(scores)
    _print_table(metrics, list(cfg.train.models), labels.genes, "test")
    for note in notes:
        print(f"note: {note}")
    return metrics


# ---------------------------------------------------------------------------------------------------------------------
# eval and heatmap


def latest_train_run(explicit: str | None) -> Path:
    if explicit:
        path = Path(explicit)
        if not (path / "splits.json").is_file():
            raise UserError(f"{path}: not a train run dir (no splits.json)")
        return path
    candidates = sorted(Path("outputs/m4/train").glob("*/splits.json"))
    if not candidates:
        raise UserError("no train run found under outputs/m4/train; set eval.run_dir / heatmap.run_dir")
    return candidates[-1].parent


def eval(cfg: DictConfig, run_dir: Path) -> dict[str, float]:  # noqa: A001 - the command is called eval
    """Re-score the saved best models of a train run on each split's test patients (features from data.*)."""
    source = latest_train_run(cfg.eval.run_dir)
    paths = resolve_paths(cfg, make_synthetic=False)
    labels = labels_with_features(cfg, paths)
    index = {s: i for i, s in enumerate(labels.slide_ids)}
    results: dict[str, list[tuple[ModelRun, np.ndarray]]] = {}
    for meta_path in sorted(source.glob("*/**/model.json")):
        model, meta = load_model(meta_path.parent)
        missing = [s for s in meta["test_slides"] if s not in index]
        if missing:
            raise UserError(f"{paths.labels_csv}: test slides of {meta_path.parent} not labelled: {', '.join(missing[:10])}")
        rows = [index[s] for s in meta["test_slides"]]
        cols = [labels.genes.index(g) for g in meta["genes"]]
        run = ModelRun(meta["name"], meta["kwargs"], cols, m4data.Split(meta["split"], [], [], rows), meta_path.parent)
        results.setdefault(meta["name"], []).append((run, _score(model, labels, rows, cols, paths.features_dir)))
    if not results:
        raise UserError(f"{source}: no trained models found")
    for name in results:
        (run_dir / name).mkdir(parents=True, exist_ok=True)
    metrics, notes = _collect(results, labels, cfg, run_dir, "test")
    _print_table(metrics, list(results), labels.genes, "test")
    for note in notes:
        print(f"note: {note}")
    return metrics


def heatmap(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    from methods.m4.heatmap import attention_heatmaps

    h = cfg.heatmap
    source = latest_train_run(h.run_dir)
    splits = json.loads((source / "splits.json").read_text())
    if not 0 <= h.split < len(splits):
        raise UserError(f"heatmap.split: {h.split} not in 0..{len(splits) - 1}")
    split_dir = source / h.model / splits[h.split]["name"]
    if not (split_dir / "model.json").is_file():
        raise UserError(f"{split_dir}: no trained {h.model} model (heatmaps need a multi-gene model: m4 or mmoe)")
    model, meta = load_model(split_dir)
    paths = resolve_paths(cfg, make_synthetic=False)
    slides = list(h.slides)
    if not slides:
        slides = splits[h.split]["test"][: h.max_slides]
    written = attention_heatmaps(model, meta["genes"], slides, _need_slides(paths), paths.features_dir, run_dir, h.thumbnail_size)
    print(f"heatmap: {len(written)} PNGs in {run_dir}")
    return {"heatmap/pngs": float(len(written))}

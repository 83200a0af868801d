"""Commands of `python -m methods.dqmq`: train, eval, export (wiring only; the method is in policy.py, the baselines
in baselines.py, training and evaluation in train.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from common.checkpoint import load_module
from common.cli import latest_run
from common.config import as_dict
from common.errors import UserError
from common.io import write_json
from common.loggers import make_logger
from methods.dqmq import data as dq
from methods.dqmq import train as dqtrain
from methods.dqmq.config import DQMQConfig
from methods.dqmq.export import export_bits, read_bits
from methods.dqmq.plots import bit_heatmap, pareto

RANK = {"dqmq": 0, "fp": 1, "static": 3}  # in tables; fixed runs (w4a4, w8a8, ...) go between fp and static


def _threads(cfg: DQMQConfig) -> None:
    if cfg.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(cfg.cpu_threads)


def _write_levels(run_dir: Path, rows: dict[str, list[dict]]) -> None:
    write_json(run_dir / "levels.json", rows)
    fields = ["method", "level", "corruption", "severity", "n", "acc", "wbits", "abits", "bitops_ratio"]
    with (run_dir / "levels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        for name, level_rows in rows.items():
            writer.writerows({"method": name, **r} for r in level_rows)


def _figures(run_dir: Path, rows: dict[str, list[dict]], metrics: dict[str, float], layers: list[str]) -> None:
    for name in rows:
        if name in ("dqmq", "static"):
            bit_heatmap(rows[name], layers, name, run_dir / f"bits_{name}.png")
    points = {n: (metrics[f"{n}/bitops_ratio"], metrics[f"{n}/acc"], metrics[f"{n}/acc_corrupted"]) for n in rows}
    pareto(points, run_dir / "pareto.png")


def train(cfg: DQMQConfig, run_dir: Path) -> dict[str, float]:
    _threads(cfg)
    logger = make_logger(cfg.logger, run_dir, as_dict(cfg))
    rows, metrics, layers = dqtrain.train_all(cfg, run_dir, logger)
    logger.finish()
    _write_levels(run_dir, rows)
    _figures(run_dir, rows, metrics, layers)
    return metrics


def _train_run(explicit: str | None) -> Path:
    if explicit is None:
        return latest_run("dqmq", "train", marker="levels.json")
    if not (Path(explicit) / "levels.json").is_file():
        raise UserError(f"{explicit}: not a dqmq train run dir (no levels.json)")
    return Path(explicit)


def _saved(source: Path) -> list[str]:
    names = [d.name for d in source.iterdir() if (d / "model" / "model.json").is_file()]
    return sorted(names, key=lambda n: (RANK.get(n, 2), n))


def eval(cfg: DQMQConfig, run_dir: Path) -> dict[str, float]:  # noqa: A001 - the command is called eval
    """Every saved model of a train run (or the one an export names, at the exported bits) at every quality level."""
    _threads(cfg)
    source = _train_run(cfg.eval.run_dir)
    s = dqtrain.setup(cfg, with_train=False)
    names = _saved(source)
    exported = None
    if cfg.eval.bits_json:
        exported = Path(cfg.eval.bits_json)
        names = [str(_read_method(exported))]
    rows, metrics, layers = {}, {}, []
    for name in names:
        path = source / name / "model"
        if not (path / "model.json").is_file():
            raise UserError(f"{exported}: method '{name}' has no saved model in {source} (saved: {_saved(source)})")
        model, meta = load_module(path)
        dqtrain.check_compatible(meta, s, path)
        if exported and model.method == "fp":
            raise UserError(f"{exported}: names method fp, a full-precision model without bit-widths")
        bits = read_bits(exported, model, s.levels) if exported else None
        rows[name] = dqtrain.evaluate(model, s, cfg.seed, cfg.eval.batch_size, bits)
        metrics.update(
            {f"{name}/{k}": v for k, v in dqtrain.summary(rows[name], s.weights, cfg.data.heavy_severity).items()}
        )
        layers = getattr(model, "layer_names", layers)
    _write_levels(run_dir, rows)
    _figures(run_dir, rows, metrics, layers)
    print("\n" + dqtrain.table(metrics))
    return metrics


def _read_method(path: Path) -> str:
    try:
        return json.loads(path.read_text(encoding="utf-8"))["method"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"eval.bits_json={path}: not an export of this package ({type(e).__name__}: {e})") from None


def export(cfg: DQMQConfig, run_dir: Path) -> dict[str, float]:
    _threads(cfg)
    source = _train_run(cfg.export.run_dir)
    path = source / cfg.export.method / "model"
    if not (path / "model.json").is_file():
        raise UserError(f"export.method={cfg.export.method}: no saved model in {source} (saved: {_saved(source)})")
    model, meta = load_module(path)
    if model.method == "fp":
        raise UserError("export.method=fp: a full-precision model has no bit-widths to export")
    s = dqtrain.setup(cfg, with_train=False)
    dqtrain.check_compatible(meta, s, path)
    data = export_bits(model, s.levels, s.images.test_x, cfg.seed, cfg.eval.batch_size, cfg.export.method)
    write_json(run_dir / "bits.json", data)
    agreement = [v["agreement"] for v in data["levels"].values()]
    print(f"export: bit-widths of {cfg.export.method} at {len(agreement)} quality levels -> {run_dir / 'bits.json'}")
    return {"export/levels": float(len(agreement)), "export/min_agreement": min(agreement)}


def check_inputs(cfg: DQMQConfig) -> None:
    """Every command's images, checked before any model is built or trained (common.cli.Command.inputs): an
    ImageFolder's class folders from its file listing."""
    if cfg.data.dataset == "imagefolder":
        dq.check_image_folder(Path(cfg.data.root))

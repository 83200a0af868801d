"""Commands of `python -m methods.dqmq`: train, eval, export (wiring only; the method is in policy.py, the baselines
in baselines.py, training and evaluation in train.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
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
from methods.dqmq.corruption_sets import mean_corruption_table, read_sets
from methods.dqmq.export import export_bits, read_bits
from methods.dqmq.onnx_export import OnnxDeployment, agreement, export_onnx
from methods.dqmq.plots import bit_heatmap, pareto

RANK = {"dqmq": 0, "fp": 1, "static": 3}  # in tables; fixed runs (w4a4, w8a8, ...) go between fp and static


def _threads(cfg: DQMQConfig) -> None:
    if cfg.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(cfg.cpu_threads)


def _write_levels(run_dir: Path, rows: dict[str, list[dict]]) -> None:
    """levels.json / levels.csv (one row per method and level) and correct.npz (per method: whether each test image
    was classified correctly, [levels, images] in the rows' order; the same images for every method)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(run_dir / "correct.npz", **{n: np.stack([r["correct"] for r in lv]) for n, lv in rows.items()})
    rows = {n: [{k: v for k, v in r.items() if k != "correct"} for r in lv] for n, lv in rows.items()}
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
    if cfg.eval.corrupted:
        metrics.update(_eval_corrupted(cfg, source, names, s.images.classes, run_dir))
    return metrics


def _eval_corrupted(cfg: DQMQConfig, source: Path, names: list[str], classes: list[str], run_dir: Path) -> dict:
    """Every model on every corruption x severity of a published benchmark folder: corruptions.csv, the table per
    corruption and severity, and the mean corruption accuracy per method (`<method>/mca`)."""
    models = {n: load_module(source / n / "model")[0].eval() for n in names}
    first = next(iter(models.values()))
    rows = []
    for corruption, severity, x, y in read_sets(
        cfg.eval.corrupted, first.image_size, classes, cfg.eval.max_per_severity
    ):
        if x.shape[1] != first.in_chans:
            raise UserError(
                f"eval.corrupted={cfg.eval.corrupted}: {x.shape[1]}-channel images; the models take {first.in_chans}"
            )
        images = x.float() / 255
        for name, model in models.items():
            r = dqtrain.score(model, images, y, cfg.eval.batch_size)
            rows.append({"method": name, "corruption": corruption, "severity": severity, **r})
    fields = ["method", "corruption", "severity", "n", "acc", "wbits", "abits", "bitops_ratio"]
    with (run_dir / "corruptions.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"\n{cfg.eval.corrupted}: accuracy per corruption and severity\n\n{mean_corruption_table(rows)}")
    return {f"{n}/mca": float(np.mean([r["acc"] for r in rows if r["method"] == n])) for n in models}


def _read_method(path: Path) -> str:
    try:
        return json.loads(path.read_text(encoding="utf-8"))["method"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"eval.bits_json={path}: not an export of this package ({type(e).__name__}: {e})") from None


def export(cfg: DQMQConfig, run_dir: Path) -> dict[str, float]:
    """bits.json (the bits per quality level) and onnx/ (the deployable model), checked against PyTorch on the test
    images at every level."""
    _threads(cfg)
    source = _train_run(cfg.export.run_dir)
    path = source / cfg.export.method / "model"
    if not (path / "model.json").is_file():
        raise UserError(f"export.method={cfg.export.method}: no saved model in {source} (saved: {_saved(source)})")
    model, meta = load_module(path)
    s = dqtrain.setup(cfg, with_train=model.method == "dqmq")  # DQMQ's configurations: those of the training mixture
    dqtrain.check_compatible(meta, s, path)
    metrics = {}
    if model.method != "fp":
        data = export_bits(model, s.levels, s.images.test_x, cfg.seed, cfg.eval.batch_size, cfg.export.method)
        write_json(run_dir / "bits.json", data)
        shares = [v["agreement"] for v in data["levels"].values()]
        print(f"export: bit-widths of {cfg.export.method} at {len(shares)} quality levels -> {run_dir / 'bits.json'}")
        metrics = {"export/levels": float(len(shares)), "export/min_agreement": min(shares)}
    train_x = dq.collate(s.train_set)["x"] if s.train_set else s.images.test_x[:1].float() / 255
    manifest = export_onnx(model, run_dir / "onnx", train_x, cfg.export.max_configs, cfg.export.method)
    test_x = torch.cat([dq.at_level(s.images.test_x, level, cfg.seed) for level in s.levels])
    check = agreement(model, OnnxDeployment(run_dir / "onnx"), test_x, cfg.eval.batch_size)
    print(
        f"export: ONNX ({len(manifest['configs'])} configuration(s){', router' if manifest['router'] else ''}) -> "
        f"{run_dir / 'onnx'}; onnxruntime's predictions equal PyTorch's on {check['agreement']:.2%} of "
        f"{len(test_x)} test images (all levels), {check['exact_config']:.2%} at the policy's own configuration"
    )
    return {
        **metrics,
        "export/onnx_configs": float(len(manifest["configs"])),
        **{f"export/onnx_{k}": v for k, v in check.items()},
    }


def check_inputs(cfg: DQMQConfig) -> None:
    """Every command's images, checked before any model is built or trained (common.cli.Command.inputs): an
    ImageFolder's class folders from its file listing."""
    if cfg.data.dataset == "imagefolder":
        dq.check_image_folder(Path(cfg.data.root))

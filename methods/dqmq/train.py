"""Training and evaluating every method on the same mixed-quality data and trainer.

The full-precision network is trained once (a stage cached under cache_dir, keyed by the data, network and pretrain
settings); every method starts from its weights, as LSQ does, and trains for `trainer` on the same data with
common.trainer.fit: fp (trained on, for an equal budget) and fixed WbAb with the task loss, static with its search
(baselines.py), DQMQ with policy.hybrid_loss.
A model is saved in `<run>/<name>/model/` (safetensors + model.json with its build arguments).

Evaluation runs the test images at every quality level (clean, each corruption x severity) and records accuracy, the
mean weight and activation bits over layers, the per-layer bits and the BitOps relative to full precision (32 x 32
bits per MAC), per level; `summary` folds the levels into the table's columns.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from common.checkpoint import load_module, save_module
from common.errors import UserError
from common.loggers import Prefixed
from common.seeding import seeded
from common.stages import run_stage, stage_path
from common.trainer import Task, fit
from methods.dqmq import data as dq
from methods.dqmq.baselines import config_bitops, static_loss, task_loss
from methods.dqmq.config import DQMQConfig
from methods.dqmq.model import QuantModel
from methods.dqmq.policy import hybrid_loss
from methods.dqmq.quant import bitops

FP_BITS = 32
# What a quantized layer holds beyond its float twin's weights.
QUANT_STATE = {"w_step", "a_step", "candidates", "a_signed", "initialized"}


@dataclasses.dataclass
class Setup:
    images: dq.Images
    levels: list[dq.Level]
    weights: list[float]  # of the levels in the training mixture (and in the "mixed" columns)
    train_set: list  # (uint8 image, label, level) of the mixed-quality training set, corrupted once
    collate: Callable  # its batches, augmented if data.augment


def setup(cfg: DQMQConfig, with_train: bool = True) -> Setup:
    d = cfg.data
    images = dq.load_images(d, cfg.data_dir, cfg.seed)
    levels = dq.quality_levels(d.corruptions, d.severities)
    weights = dq.mixture_weights(levels, d.clean_fraction)
    if not with_train:
        return Setup(images, levels, weights, [], dq.collate)
    mixed = dq.MixedQuality(images.train_x, images.train_y, levels, weights, d.copies, cfg.seed)
    collate = functools.partial(dq.collate, augment=d.augment)
    return Setup(images, levels, weights, [mixed[i] for i in range(len(mixed))], collate)


def method_names(cfg: DQMQConfig) -> list[str]:
    """Run names: dqmq, fp, w8a8, w4a4, ..., static."""
    return [n for m in cfg.methods() for n in ([f"w{b}a{b}" for b in cfg.fixed_bits] if m == "fixed" else [m])]


def model_kwargs(cfg: DQMQConfig, name: str, images: dq.Images) -> dict:
    x = images.train_x.float() / 255
    method = "fixed" if name.startswith("w") else name
    return dict(
        arch=cfg.net.arch,
        num_classes=len(images.classes),
        in_chans=int(images.train_x.shape[1]),
        image_size=cfg.data.image_size,
        method=method,
        candidates=[int(name[1:].split("a")[0])] if method == "fixed" else sorted(cfg.quant.bits),
        mean=x.mean((0, 2, 3)).tolist(),
        std=x.std((0, 2, 3)).clamp_min(1e-3).tolist(),
        width=cfg.net.width,
        pretrained=False,  # only the full-precision network starts from hub weights; the others load its weights
        policy_hidden=cfg.policy.hidden,
        reward_hidden=cfg.policy.reward_hidden,
        # Only DQMQ switches bits per input; fixed and static run one configuration, and their BatchNorm is trained
        # at it (static's search would give only its current argmax pair's BatchNorm the batch).
        bit_bn=cfg.quant.bit_bn and method == "dqmq",
    )


def total_calls(n: int, t) -> int:
    """Loss calls of one process in a fit() run on n examples: its optimizer steps times the accumulation."""
    from accelerate import PartialState

    per_epoch = math.ceil(n / (t.batch_size * t.grad_accum * PartialState().num_processes))
    steps = t.max_steps if t.max_steps > 0 else max(1, math.ceil(t.epochs * per_epoch))
    return steps * t.grad_accum


def pretrained_fp(cfg: DQMQConfig, s: Setup, run_dir: Path, logger) -> Path:
    """The full-precision network (a cached stage): the fp row and every quantized method's starting point."""
    corruptions = dq.severity_key(cfg.data.corruptions)
    path = stage_path(cfg.cache_dir, "dqmq/fp", cfg.data, corruptions, cfg.net, cfg.pretrain, cfg.seed)
    kwargs = model_kwargs(cfg, "fp", s.images)
    work = path.with_name(f"{path.name}.work")

    def write(tmp: Path) -> None:
        with seeded(cfg.seed, "dqmq/fp_pretrain"):  # its weights and training draw from the seed alone
            task = Task(QuantModel(**{**kwargs, "pretrained": cfg.net.pretrained}), s.train_set, s.collate, task_loss)
            # Its checkpoints live beside the stage, under its key (which holds what else shapes it): a killed
            # pretrain resumes, a pretrain of other settings never does.
            result = fit(task, cfg.pretrain.trainer, work, Prefixed(logger, "fp_pretrain"))
        save_module(result.model.cpu(), tmp, "dqmq.model", "quant", kwargs)
        shutil.rmtree(work, ignore_errors=True)  # the saved network replaces the trainer's checkpoints

    return run_stage("full-precision network", path, write)


def train_one(cfg: DQMQConfig, name: str, s: Setup, fp_dir: Path, run_dir: Path, logger, budget: float | None):
    """Train one method from the full-precision weights for `trainer` (fp too, so that every row has had the same
    training); returns the trained model (saved too)."""
    with seeded(cfg.seed, f"dqmq/{name}"):  # each method's run depends on the seed alone, not on what ran before it
        return _train_one(cfg, name, s, fp_dir, run_dir, logger, budget)


def _train_one(cfg: DQMQConfig, name: str, s: Setup, fp_dir: Path, run_dir: Path, logger, budget: float | None):
    kwargs = model_kwargs(cfg, name, s.images)
    model = QuantModel(**kwargs)
    fp, _ = load_module(fp_dir)
    missing, unexpected = model.net.load_state_dict(fp.net.state_dict(), strict=False)
    if unexpected or any(k.rsplit(".", 1)[-1] not in QUANT_STATE for k in missing):
        raise RuntimeError(f"{fp_dir}: full-precision weights do not fit {name} ({missing[:5]}, {unexpected[:5]})")
    calls = total_calls(len(s.train_set), cfg.trainer)
    if model.method == "dqmq":
        model.policy.fit_features(dq.collate(s.train_set[:4096])["x"])
        loss = hybrid_loss(cfg.policy, calls)
    elif model.method == "static":
        loss = static_loss(cfg.static, calls, budget * FP_BITS**2 * float(model.macs.sum()))
    else:
        loss = task_loss
    result = fit(Task(model, s.train_set, s.collate, loss), cfg.trainer, run_dir / name, Prefixed(logger, name))
    model = result.model.cpu().eval()
    save_module(model, run_dir / name / "model", "dqmq.model", "quant", kwargs)
    return model


@torch.no_grad()
def mean_train_bitops(model: QuantModel, train_set: list, batch_size: int = 512) -> float:
    """Mean BitOps per sample of the model's own choices on the training mixture, relative to full precision."""
    total = 0.0
    for start in range(0, len(train_set), batch_size):
        x = dq.collate(train_set[start : start + batch_size])["x"]
        w, a = model.decide(x)
        total += float(bitops(model.macs, model.candidates[w].float(), model.candidates[a].float()).sum())
    return total / len(train_set) / (FP_BITS**2 * float(model.macs.sum()))


@torch.no_grad()
def score(model: QuantModel, x_all: torch.Tensor, y_all: torch.Tensor, batch_size: int, bits=None) -> dict:
    """Accuracy, per-image correctness, mean bits, per-layer mean bits and BitOps / FP of images x_all (float in
    [0, 1]) at the model's own choice, or at `bits` (candidate indices [L, 2]) for every image."""
    correct, w_bits, a_bits = [], [], []
    for start in range(0, len(x_all), batch_size):
        x = x_all[start : start + batch_size]
        if model.method == "fp":
            logits = model(x)
            w_bits.append(torch.full((len(x), 1), float(FP_BITS)))
            a_bits.append(torch.full((len(x), 1), float(FP_BITS)))
        else:
            w, a = model.decide(x) if bits is None else (b.expand(len(x), -1) for b in bits.unbind(1))
            logits = model(x, bits=(w, a))
            w_bits.append(model.candidates[w].float())
            a_bits.append(model.candidates[a].float())
        correct.append(logits.argmax(1) == y_all[start : start + batch_size])
    wb, ab = torch.cat(w_bits), torch.cat(a_bits)
    ratio = 1.0 if model.method == "fp" else float(bitops(model.macs, wb, ab).mean() / (FP_BITS**2 * model.macs.sum()))
    return dict(
        n=len(x_all),
        acc=float(torch.cat(correct).float().mean()),
        correct=torch.cat(correct).numpy(),  # per image, for paired comparisons (correct.npz)
        wbits=float(wb.mean()),
        abits=float(ab.mean()),
        bitops_ratio=ratio,
        layer_wbits=wb.mean(0).tolist(),
        layer_abits=ab.mean(0).tolist(),
    )


@torch.no_grad()
def evaluate(
    model: QuantModel, s: Setup, seed: int, batch_size: int, bits: dict[str, torch.Tensor] | None = None
) -> list[dict]:
    """One row per quality level (`score`'s). `bits` (level name -> candidate indices [L, 2]) runs each level at a
    given configuration instead of the model's choice."""
    model.eval()
    rows = []
    for level in s.levels:
        x = dq.at_level(s.images.test_x, level, seed)
        row = score(model, x, s.images.test_y, batch_size, None if bits is None else bits[level.name])
        rows.append(dict(level=level.name, corruption=level.corruption, severity=level.severity, **row))
    return rows


def summary(rows: list[dict], weights: list[float], heavy: int) -> dict[str, float]:
    """The table's columns from the per-level rows: accuracy clean / corrupted (mean over corrupted levels) / heavy
    (severity >= heavy) / mixed (weighted as the training mixture), and bits and BitOps likewise."""
    corrupted = [r for r in rows if r["corruption"] != "clean"]
    groups = {"clean": [r for r in rows if r["corruption"] == "clean"], "corrupted": corrupted}
    groups["heavy"] = [r for r in corrupted if r["severity"] >= heavy]
    out: dict[str, float] = {}
    for key in ("acc", "wbits", "abits", "bitops_ratio"):
        out[key] = sum(w * r[key] for w, r in zip(weights, rows, strict=True))
        for group, members in groups.items():
            if members:
                out[f"{key}_{group}"] = sum(r[key] for r in members) / len(members)
    return out


def train_all(cfg: DQMQConfig, run_dir: Path, logger) -> tuple[dict[str, list[dict]], dict[str, float], list[str]]:
    """Every method of the run; returns the per-level rows and the metrics per method, and the layer names."""
    s = setup(cfg)
    print(
        f"data: {cfg.data.dataset}, {len(s.images.train_y)} train images x {cfg.data.copies} quality draws, "
        f"{len(s.images.test_y)} test images x {len(s.levels)} quality levels; net {cfg.net.arch}"
    )
    fp_dir = pretrained_fp(cfg, s, run_dir, logger)
    rows: dict[str, list[dict]] = {}
    metrics: dict[str, float] = {}
    budget = cfg.static.target_bitops
    layer_names: list[str] = []
    for name in method_names(cfg):
        model = train_one(cfg, name, s, fp_dir, run_dir, logger, budget)
        layer_names = getattr(model, "layer_names", layer_names)
        if name == "dqmq" and budget is None:
            budget = mean_train_bitops(model, s.train_set)
            print(f"static: BitOps budget = DQMQ's mean on the training data = {budget:.5f} of full precision")
        if name == "static":
            metrics["static/budget"] = budget
            metrics["static/train_bitops_ratio"] = config_bitops(model.choice, model.macs, model.candidates) / (
                FP_BITS**2 * float(model.macs.sum())
            )
        rows[name] = evaluate(model, s, cfg.seed, cfg.eval.batch_size)
        metrics.update({f"{name}/{k}": v for k, v in summary(rows[name], s.weights, cfg.data.heavy_severity).items()})
    return rows, metrics, layer_names


def check_compatible(meta: dict, s: Setup, path: Path) -> None:
    kw = meta["kwargs"]
    have = (len(s.images.classes), int(s.images.train_x.shape[1]), s.images.train_x.shape[-1])
    if (kw["num_classes"], kw["in_chans"], kw["image_size"]) != have:
        raise UserError(
            f"{path}: trained for {kw['num_classes']} classes, {kw['in_chans']} channels, {kw['image_size']} px; "
            f"the configured data has {have[0]}, {have[1]}, {have[2]} (set the data settings of the train run)"
        )


COLUMNS = (
    ("acc", "acc mixed"),
    ("acc_clean", "acc clean"),
    ("acc_corrupted", "acc corrupted"),
    ("acc_heavy", "acc heavy"),
    ("wbits", "W bits"),
    ("abits", "A bits"),
)


def table(metrics: dict[str, float]) -> str:
    """One row per method: accuracy (mixture, clean, corrupted, heavy), mean bits (mixture; clean -> heavy), BitOps."""
    from common.results import format_number, markdown_table

    names = list(dict.fromkeys(k.split("/")[0] for k in metrics if k.endswith("/acc_clean")))
    header = ["method", *(label for _, label in COLUMNS), "W/A bits clean -> heavy", "BitOps / FP", "BitOps / W8A8"]
    rows = []
    for n in names:
        m = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(f"{n}/")}
        shift = f"{m['wbits_clean']:.2f}/{m['abits_clean']:.2f} -> {m.get('wbits_heavy', float('nan')):.2f}/"
        shift += f"{m.get('abits_heavy', float('nan')):.2f}"
        ratio = m["bitops_ratio"]
        rows.append([n, *(format_number(m.get(k, float("nan")), 4) for k, _ in COLUMNS), shift, ratio, ratio * 16])
    return markdown_table(header, rows)

"""One trainer for every method, on `accelerate`.

A method describes its job as a Task (model, data, a loss function, an optional evaluate) and calls fit(). The trainer
owns everything else: DDP/FSDP through accelerate, gradient accumulation, mixed precision, clipping, the schedule,
periodic evaluation, the best checkpoint, exact resume, and a clean stop on a non-finite loss.

Data order is a pure function of (seed, epoch, step), so a resumed run sees exactly the batches an uninterrupted run
would have seen. The trainer shards batches over processes itself: one optimizer step consumes
`batch_size * grad_accum * num_processes` examples, split rank by rank, so N processes with batch_size b take the same
steps as one process with batch_size N*b.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from common.checkpoint import (
    complete,
    publish,
    remove_leftovers,
    retire,
    rng_state,
    saving,
    set_rng_state,
    step_of,
    without_shared,
)
from common.config import TrainerConfig
from common.errors import UserError
from common.io import writer_tag
from common.loggers import Logger, NullLogger, show_progress
from common.stages import fingerprint_of, key_data

__all__ = ["Task", "FitResult", "TrainerConfig", "NonFiniteLoss", "fit", "batches_for_step"]


class NonFiniteLoss(UserError):
    """The loss or the gradient norm became NaN/inf; the last good checkpoint is kept."""


@dataclass
class Task:
    model: torch.nn.Module
    train_data: Sequence
    collate: Callable[[list], Any]
    loss: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None
    frozen: list[torch.nn.Module] = field(default_factory=list)


@dataclass
class FitResult:
    model: torch.nn.Module
    metrics: dict[str, float]
    steps: int


def batches_for_step(n: int, step: int, steps_per_epoch: int, global_batch: int, seed: int) -> list[int]:
    """Indices of one optimizer step's global batch. Each epoch is a seeded permutation, wrapped to fill the last batch."""
    epoch, pos = divmod(step, steps_per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    need = steps_per_epoch * global_batch
    order = (order * math.ceil(need / n))[:need]
    return order[pos * global_batch : (pos + 1) * global_batch]


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _precision(setting: str) -> str:
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _optimizer(params_with_names: list[tuple[str, torch.nn.Parameter]], cfg: TrainerConfig) -> torch.optim.Optimizer:
    # As in the HF Trainer: no weight decay on biases and norm weights (1-d parameters).
    decay = [p for _, p in params_with_names if p.ndim >= 2]
    no_decay = [p for _, p in params_with_names if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kinds = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    if cfg.optimizer not in kinds:
        raise UserError(f"trainer.optimizer: unknown optimizer '{cfg.optimizer}'; valid: {', '.join(kinds)}")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    # The fused kernel updates each tensor in one pass. On CPU the default loop allocates several temporaries per
    # tensor and step: for M4 (7.5M parameters, 1 thread) 16-80 ms per step against 4 ms fused.
    params = [p for _, p in params_with_names]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) or None
    # torch.optim.Adam applies L2 (not decoupled) weight decay, as the official M4 code relies on.
    return kinds[cfg.optimizer](groups, lr=cfg.lr, fused=fused)


def _load_weights(model: torch.nn.Module, path: Path, frozen: set[str] = frozenset()) -> None:
    """Load a checkpoint's weights; tied copies and frozen parameters (never saved) may be absent."""
    missing, unexpected = model.load_state_dict(load_file(path), strict=False)
    tied = {k for k, v in model.state_dict().items()} - set(without_shared(model.state_dict()))
    absent = set(missing) - tied - frozen
    if unexpected or absent:
        raise UserError(
            f"{path}: weights do not fit the model (missing {sorted(absent)[:5]}, unexpected {unexpected[:5]})"
        )


def _check_same_training(saved: dict[str, Any], now: dict[str, Any], ckpt: Path, at: str) -> None:
    changed = [
        f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)
    ]
    if changed:
        raise UserError(
            f"{ckpt}: this checkpoint was trained with other settings ({'; '.join(changed)}); "
            f"rerun with {at}.resume=false to start over, or with the checkpoint's settings to continue it"
        )


def _as_config(cfg: TrainerConfig | DictConfig | dict) -> TrainerConfig:
    if isinstance(cfg, TrainerConfig):
        return cfg
    merged = OmegaConf.merge(OmegaConf.structured(TrainerConfig), cfg)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def _check(task: Task, cfg: TrainerConfig, at: str) -> None:
    """What the schema cannot see: the task's data, parameters and evaluation against the settings."""
    if len(task.train_data) == 0:
        raise UserError("training data is empty")
    if cfg.grad_accum < 1 or cfg.batch_size < 1:
        raise UserError(f"{at}: batch_size ({cfg.batch_size}) and grad_accum ({cfg.grad_accum}) must be >= 1")
    if cfg.best_mode not in ("max", "min"):
        raise UserError(f"{at}.best_mode: '{cfg.best_mode}' is neither max nor min")
    if cfg.best_metric is not None and task.evaluate is None:
        raise UserError(f"{at}.best_metric={cfg.best_metric}: this task evaluates nothing; set it to null")
    if cfg.gradient_checkpointing and not hasattr(task.model, "gradient_checkpointing_enable"):
        raise UserError(f"{at}.gradient_checkpointing: {type(task.model).__name__} is not a transformers model")
    if not any(p.requires_grad for p in task.model.parameters()):
        raise UserError("the model has no trainable parameters")


@dataclass
class _Loop:
    """One fit() call's moving parts, shared by its named steps below."""

    task: Task
    cfg: TrainerConfig
    at: str  # the trainer section's path in the run's config, for messages
    accelerator: Any
    root: Path  # checkpoints/
    state: dict[str, Any]  # step, best, best_step, metrics, settings: what state.json holds
    state_format: str  # own | accelerate
    total_steps: int
    steps_per_epoch: int
    global_batch: int
    logger: Logger
    model: Any = None
    optimizer: Any = None
    scheduler: Any = None
    frozen: set[str] = field(default_factory=set)  # names of parameters never trained, never saved
    last: Path | None = None  # the newest complete step checkpoint
    last_save: float = field(default_factory=time.monotonic)


def _accelerator(cfg: TrainerConfig) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    precision = _precision(cfg.mixed_precision)
    # accelerate keeps the first precision of a process in a shared state and refuses another one, but one run may
    # train twice with different ones (DQMQ: pretrain.trainer, then trainer): that state is reset, the process group
    # kept. Under DeepSpeed the precision is the engine's config, which accelerate does not compare.
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != precision and shared.get("deepspeed_plugins") is None:
        AcceleratorState._reset_state()
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # without it accelerate ignores torchrun on CPU-only hosts (no gloo DDP)
        mixed_precision=precision,
        # accelerate owns accumulation: it skips the gradient sync of all but the last micro-batch under DDP/FSDP,
        # scales the loss, and under DeepSpeed lets the engine accumulate and step itself.
        gradient_accumulation_steps=cfg.grad_accum,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.ddp_find_unused_parameters)],
    )
    if accelerator.state.deepspeed_plugin is not None:
        # DeepSpeed wants the micro-batch size, which it otherwise reads off a prepared DataLoader (we shard ourselves).
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
    return accelerator


def _plan(
    task: Task, cfg: TrainerConfig, at: str, shaping: dict, out_dir: Path, accelerator: Any, logger: Logger
) -> _Loop:
    """Steps, the checkpoint folder and the fingerprint of this training: what a resumed run must match."""
    n, world = len(task.train_data), accelerator.num_processes
    global_batch = cfg.batch_size * cfg.grad_accum * world
    steps_per_epoch = math.ceil(n / global_batch)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * steps_per_epoch))
    # FSDP and DeepSpeed shard weights and optimizer state over the ranks: only accelerate's own state files hold them.
    sharded = accelerator.distributed_type.name in ("FSDP", "DEEPSPEED")
    state_format = cfg.checkpoint_state if cfg.checkpoint_state != "auto" else ("accelerate" if sharded else "own")
    # What shapes the training: the trainer's settings (less bookkeeping declared key=False, such as save_every or
    # progress), the method's settings declared trains=True, the data size and the process count.
    settings = {
        **{f"{at}.{k}": v for k, v in key_data(cfg).items()},
        **shaping,
        "examples": n,
        "processes": world,
    }
    if state_format == "accelerate":  # absent from the trainer's own checkpoints (written before the key existed)
        settings["checkpoint_state"] = state_format
    state = {"step": 0, "best": None, "best_step": None, "metrics": {}, "settings": settings}
    return _Loop(
        task, cfg, at, accelerator, out_dir / "checkpoints", state, state_format, total_steps, steps_per_epoch,
        global_batch, logger,
    )  # fmt: skip


def _prepare_checkpoints(loop: _Loop) -> None:
    """Find the checkpoint to resume from and clear what killed attempts left (main process; the others wait)."""
    root, acc = loop.root, loop.accelerator
    if acc.is_main_process and root.is_dir():
        if not loop.cfg.resume:  # starting over: an older run's checkpoints would otherwise count as newer
            retire(root)
        else:
            newest = complete(root, "step-", "state.json")
            remove_leftovers(root, step_of(newest[0]) if newest else 0)
    acc.wait_for_everyone()
    newest = complete(root, "step-", "state.json") if root.is_dir() and loop.cfg.resume else []
    loop.last = newest[0] if newest else None
    if loop.last is not None:
        saved = json.loads((loop.last / "state.json").read_text())
        _check_same_training(saved.get("settings", {}), loop.state["settings"], loop.last, loop.at)
        loop.state = saved
        acc.print(f"resuming from {loop.last} (step {saved['step']} of {loop.total_steps})", flush=True)


def _set_up(loop: _Loop) -> None:
    """Model, optimizer and schedule, prepared by accelerate, and restored from the checkpoint when resuming."""
    from transformers import get_scheduler

    cfg, acc, model = loop.cfg, loop.accelerator, loop.task.model
    # Checkpoints keep what training changes: a LoRA run saves its adapters, not the frozen 7B base.
    loop.frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    if loop.last is not None and loop.state_format == "own":
        _load_weights(model, loop.last / "model.safetensors", loop.frozen)
    if loop.last is None:
        # A fresh start draws dropout and sampling from the seed alone, not from whatever earlier steps of the
        # process (or a cache that spared them) left in the global RNGs.
        from accelerate.utils import set_seed

        set_seed(cfg.seed)
    if cfg.gradient_checkpointing:
        # transformers 5 renamed it activation checkpointing; non-reentrant recomputation gives gradients to LoRA
        # adapters even though the frozen embeddings below them need none.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = _optimizer([(k, p) for k, p in model.named_parameters() if p.requires_grad], cfg)
    # Built on the raw optimizer and stepped once per optimizer step by us (accelerate's wrapper would step it
    # once per process).
    loop.scheduler = get_scheduler(
        cfg.scheduler,
        optimizer,
        num_warmup_steps=max(cfg.warmup_steps, int(round(cfg.warmup_epochs * loop.steps_per_epoch))),
        num_training_steps=loop.total_steps,
        scheduler_specific_kwargs=dict(cfg.scheduler_kwargs) or None,
    )
    loop.model, loop.optimizer = acc.prepare(model, optimizer)
    for frozen in loop.task.frozen:
        frozen.to(acc.device).eval().requires_grad_(False)
    if loop.last is not None:
        if loop.state_format == "accelerate":
            acc.load_state(loop.last / "accelerate")  # weights, optimizer and RNG, each rank its shard
        else:
            state = torch.load(loop.last / f"optimizer.rank{acc.process_index}.pt", weights_only=True)
            loop.optimizer.load_state_dict(state)
        loop.scheduler.load_state_dict(torch.load(loop.last / "scheduler.pt", weights_only=True))
        set_rng_state(torch.load(loop.last / f"rng.rank{acc.process_index}.pt", weights_only=True))


def _trained_weights(loop: _Loop) -> dict[str, torch.Tensor]:
    state = without_shared(loop.accelerator.get_state_dict(loop.model))
    return {k: v for k, v in state.items() if k not in loop.frozen}


def _save_checkpoint(loop: _Loop, step: int) -> None:
    """step-<step>/: trainable weights (or accelerate's sharded state), optimizer, schedule and RNG of every rank."""
    from accelerate.utils import broadcast_object_list

    acc, rank = loop.accelerator, loop.accelerator.process_index
    weights = _trained_weights(loop) if loop.state_format == "own" else None
    # One temp dir for all ranks, named by the main process (unique per process, so never another writer's).
    tmp = loop.root / broadcast_object_list([f".tmp-step-{step}-{writer_tag()}"])[0]
    with saving(tmp, loop.last):
        if acc.is_main_process:
            tmp.mkdir(parents=True)
            if weights is not None:
                save_file(weights, tmp / "model.safetensors")
            torch.save(loop.scheduler.state_dict(), tmp / "scheduler.pt")
        acc.wait_for_everyone()
        if loop.state_format == "accelerate":
            acc.save_state(tmp / "accelerate", safe_serialization=True)  # collective: every rank writes
        else:
            torch.save(loop.optimizer.state_dict(), tmp / f"optimizer.rank{rank}.pt")
        torch.save(rng_state(), tmp / f"rng.rank{rank}.pt")
        acc.wait_for_everyone()
        if acc.is_main_process:
            # state.json is written last: a checkpoint without it is incomplete and never resumed from.
            (tmp / "state.json").write_text(json.dumps({**loop.state, "step": step}))
            publish(tmp, loop.root / f"step-{step}", "step-", "state.json")
    loop.last, loop.last_save = loop.root / f"step-{step}", time.monotonic()
    acc.wait_for_everyone()


def _evaluate(loop: _Loop, step: int) -> None:
    """Run the task's evaluation; a new best on best_metric publishes best-<step>/."""
    from accelerate.utils import broadcast_object_list

    cfg, acc, state = loop.cfg, loop.accelerator, loop.state
    if loop.task.evaluate is None:
        return
    loop.model.eval()
    with torch.no_grad(), acc.autocast():
        metrics = loop.task.evaluate(acc.unwrap_model(loop.model))
    loop.model.train()
    metrics = broadcast_object_list([metrics])[0]
    state["metrics"] = metrics
    loop.logger.log({f"eval/{k}": v for k, v in metrics.items()}, step)
    if cfg.best_metric is None:
        return
    if cfg.best_metric not in metrics:
        raise UserError(f"{loop.at}.best_metric: '{cfg.best_metric}' not among evaluated metrics {sorted(metrics)}")
    value, best = metrics[cfg.best_metric], state["best"]
    if best is None or (value > best if cfg.best_mode == "max" else value < best):
        state.update(best=value, best_step=step)
        weights = _trained_weights(loop)
        if acc.is_main_process:
            tmp = loop.root / f".tmp-best-{step}-{writer_tag()}"
            previous = complete(loop.root, "best-", "metrics.json") if loop.root.is_dir() else []
            with saving(tmp, previous[0] if previous else None):
                tmp.mkdir(parents=True)
                save_file(weights, tmp / "model.safetensors")
                (tmp / "metrics.json").write_text(json.dumps({"step": step, **metrics}))
                publish(tmp, loop.root / f"best-{step}", "best-", "metrics.json")
        acc.wait_for_everyone()


def _micro_batches(loop: _Loop) -> Iterator[list[int]]:
    """This rank's share of every remaining optimizer step, micro-batch by micro-batch, in the seeded order."""
    cfg, n = loop.cfg, len(loop.task.train_data)
    world, rank = loop.accelerator.num_processes, loop.accelerator.process_index
    for step in range(loop.state["step"], loop.total_steps):
        indices = batches_for_step(n, step, loop.steps_per_epoch, loop.global_batch, cfg.seed)
        for micro in range(cfg.grad_accum):
            start = (micro * world + rank) * cfg.batch_size
            yield indices[start : start + cfg.batch_size]


def _loader(loop: _Loop) -> Iterator[Any]:
    """Batches in the seeded order; workers load and collate ahead of the step, in the same order."""
    return iter(
        DataLoader(
            loop.task.train_data,  # type: ignore[arg-type] - a Sequence is a map-style dataset
            batch_sampler=_micro_batches(loop),  # type: ignore[arg-type] - iterated once
            collate_fn=loop.task.collate,
            num_workers=loop.cfg.num_workers,
            pin_memory=loop.accelerator.device.type == "cuda",
            generator=torch.Generator(),  # its own: seeding workers must not draw from the RNG dropout uses
        )
    )


def _train_step(loop: _Loop, loader: Iterator[Any], step: int) -> tuple[float, dict[str, float], bool]:
    """One optimizer step over grad_accum micro-batches: (mean loss over ranks, the loss's logs, checkpoint due by
    time). A non-finite loss or gradient norm on any rank stops every rank with the last good checkpoint named."""
    cfg, acc = loop.cfg, loop.accelerator
    # [sum of micro losses, non-finite flag, a checkpoint is due by time]: reduced once, so every rank agrees.
    flags = torch.zeros(3, device=acc.device)
    if acc.is_main_process and 0 < cfg.save_minutes * 60 <= time.monotonic() - loop.last_save:
        flags[2] = 1
    logs: dict[str, float] = {}
    for _ in range(cfg.grad_accum):
        batch = _to_device(next(loader), acc.device)
        with acc.accumulate(loop.model):
            with acc.autocast():
                loss, logs = loop.task.loss(loop.model, batch)
            if not torch.isfinite(loss.detach()):
                flags[1] = 1  # still run backward: under DDP every rank must reach the same all-reduce
            acc.backward(loss)  # divided by grad_accum there
        flags[0] += loss.detach().float() / cfg.grad_accum
    if not acc.sync_gradients:
        raise RuntimeError("accelerate did not sync gradients at the last micro-batch of an optimizer step")
    grad_norm = acc.clip_grad_norm_(loop.model.parameters(), cfg.max_grad_norm) if cfg.max_grad_norm > 0 else None
    if grad_norm is not None and not torch.isfinite(torch.as_tensor(grad_norm)):
        flags[1] = 1
    flags = acc.reduce(flags, reduction="sum")
    if flags[1] > 0:
        where = f"last good checkpoint: {loop.last}" if loop.last is not None else "no checkpoint was saved before it"
        where += f"; rerun with a lower {loop.at}.lr and {loop.at}.resume=false to start over"
        raise NonFiniteLoss(f"loss became non-finite at step {step}; training stopped, {where}")
    loop.optimizer.step()
    loop.scheduler.step()
    loop.optimizer.zero_grad(set_to_none=True)
    return flags[0].item() / acc.num_processes, logs, bool(flags[2] > 0)


def _train(loop: _Loop) -> float | None:
    """The step loop from the resumed step to the end: log, evaluate and checkpoint on schedule. Returns the running
    (exponentially smoothed) loss, None when nothing was ever trained."""
    cfg, state = loop.cfg, loop.state
    progress = tqdm(
        total=loop.total_steps,
        initial=state["step"],
        disable=not (show_progress(cfg.progress) and loop.accelerator.is_main_process),
    )
    running: float | None = state.get("running_loss")  # resumed with the rest, so a rerun reports the same loss
    loader = _loader(loop)
    try:
        for step in range(state["step"], loop.total_steps):
            mean_loss, logs, due_by_time = _train_step(loop, loader, step)
            done = step + 1
            running = mean_loss if running is None else 0.9 * running + 0.1 * mean_loss
            progress.update(1)
            progress.set_postfix(loss=f"{running:.4f}")
            if done % cfg.log_every == 0 or done == loop.total_steps:
                lr = loop.scheduler.get_last_lr()[0]
                loop.logger.log(
                    {"train/loss": mean_loss, "train/lr": lr, **{f"train/{k}": v for k, v in logs.items()}}, done
                )
            end_of_epoch = done % loop.steps_per_epoch == 0 or done == loop.total_steps
            if done == loop.total_steps or (done % cfg.eval_every == 0 if cfg.eval_every > 0 else end_of_epoch):
                _evaluate(loop, done)
            by_steps = done % cfg.save_every == 0 if cfg.save_every > 0 else end_of_epoch
            if by_steps or due_by_time:
                state.update(step=done, running_loss=running)
                _save_checkpoint(loop, done)
    finally:
        progress.close()
    return running


def fit(
    task: Task,
    cfg: TrainerConfig | DictConfig | dict,
    out_dir: str | Path,
    logger: Logger | None = None,
) -> FitResult:
    """Train task.model; checkpoints and metrics go under out_dir, and a rerun resumes from its newest complete
    checkpoint. Within a command (common.stages.running), the trainer's settings are named by their path in the
    run's config (`pretrain.trainer.lr`) and the run's settings declared trains=True join the resume fingerprint."""
    at, shaping = fingerprint_of(cfg)
    cfg = _as_config(cfg)
    _check(task, cfg, at)
    accelerator = _accelerator(cfg)
    loop = _plan(task, cfg, at, shaping, Path(out_dir), accelerator, logger or NullLogger())
    _prepare_checkpoints(loop)
    _set_up(loop)
    running = _train(loop)
    model = accelerator.unwrap_model(loop.model)
    metrics = dict(loop.state["metrics"])
    if cfg.best_metric is not None and loop.state["best_step"] is not None:
        accelerator.wait_for_everyone()
        best = complete(loop.root, "best-", "metrics.json")[0]
        _load_weights(model, best / "model.safetensors", loop.frozen)
        metrics = json.loads((best / "metrics.json").read_text())
    if running is not None:
        metrics["train/loss"] = running
    return FitResult(model=model, metrics=metrics, steps=loop.total_steps)

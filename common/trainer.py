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

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from common.checkpoint import without_shared
from common.config import TrainerConfig
from common.errors import UserError
from common.io import write_error
from common.loggers import Logger, NullLogger, show_progress
from common.stages import key_data

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


@contextlib.contextmanager
def _saving(tmp: Path) -> Iterator[None]:
    """A failed checkpoint write (disk full, read-only) is one line naming the path; its partial files go."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - torch.save reports a full disk as a RuntimeError
        error = write_error(tmp, e)  # before the cleanup frees the space
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{error}; the previous checkpoint is kept") from None


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": list(random.getstate()[1]),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))


def _fsync(path: Path) -> None:
    """Flush a file, or a directory entry list, to disk: a rename is durable only after both are."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _complete(root: Path, prefix: str, marker: str) -> list[Path]:
    """`<prefix><step>` directories holding their marker file (written last), newest first."""
    found = [(int(d.name[len(prefix) :]), d) for d in root.glob(f"{prefix}*") if d.name[len(prefix) :].isdigit()]
    return [d for _, d in sorted(found, reverse=True) if (d / marker).is_file()]


def _publish(tmp: Path, final: Path, prefix: str, marker: str) -> None:
    """Make a fully written temp dir the newest `<prefix><step>`, then retire the older ones.

    Each step is atomic (rename) and durable (fsync), and an older directory is renamed away before it is deleted,
    so a kill at any instant leaves the newest complete directory intact and no half-deleted one that looks complete.
    """
    for f in sorted(tmp.rglob("*"), key=lambda p: len(p.parts), reverse=True):  # files before their directories
        _fsync(f)
    _fsync(tmp)
    os.rename(tmp, final)
    _fsync(final.parent)
    for old in _complete(final.parent, prefix, marker)[1:]:
        trash = old.with_name(f".trash-{old.name}-{os.getpid()}")
        os.rename(old, trash)
        shutil.rmtree(trash)


def _check_same_training(saved: dict[str, Any], now: dict[str, Any], ckpt: Path) -> None:
    changed = [
        f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)
    ]
    if changed:
        raise UserError(
            f"{ckpt}: this checkpoint was trained with other settings ({'; '.join(changed)}); "
            "rerun with trainer.resume=false to start over, or with the checkpoint's settings to continue it"
        )


def _remove_leftovers(root: Path) -> None:
    """Temp and trash directories of processes that died mid-save (their pid is gone); a live writer's are kept."""
    for d in [*root.glob(".tmp-*"), *root.glob(".trash-*")]:
        pid = int(d.name.rsplit("-", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


def _as_config(cfg: TrainerConfig | DictConfig | dict) -> TrainerConfig:
    if isinstance(cfg, TrainerConfig):
        return cfg
    merged = OmegaConf.merge(OmegaConf.structured(TrainerConfig), cfg)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def fit(
    task: Task, cfg: TrainerConfig | DictConfig | dict, out_dir: str | Path, logger: Logger | None = None
) -> FitResult:
    """Train task.model; checkpoints and metrics go under out_dir. Resumes from out_dir/checkpoints/last if present."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list
    from transformers import get_scheduler

    cfg = _as_config(cfg)
    out_dir = Path(out_dir)
    logger = logger or NullLogger()
    if len(task.train_data) == 0:
        raise UserError("training data is empty")
    if cfg.grad_accum < 1 or cfg.batch_size < 1:
        raise UserError(f"trainer: batch_size ({cfg.batch_size}) and grad_accum ({cfg.grad_accum}) must be >= 1")
    if cfg.best_mode not in ("max", "min"):
        raise UserError(f"trainer.best_mode: '{cfg.best_mode}' is neither max nor min")

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
    world, rank = accelerator.num_processes, accelerator.process_index
    if accelerator.state.deepspeed_plugin is not None:
        # DeepSpeed wants the micro-batch size, which it otherwise reads off a prepared DataLoader (we shard ourselves).
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
    n = len(task.train_data)
    global_batch = cfg.batch_size * cfg.grad_accum * world
    steps_per_epoch = math.ceil(n / global_batch)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = max(cfg.warmup_steps, int(round(cfg.warmup_epochs * steps_per_epoch)))

    # Checkpoints are checkpoints/step-<N>/ (state.json written last) and best weights checkpoints/best-<N>/
    # (metrics.json last); the newest complete one counts, whatever instant an earlier process died at.
    root = out_dir / "checkpoints"
    if accelerator.is_main_process and root.is_dir():
        if cfg.resume:
            _remove_leftovers(root)
        else:  # starting over: an older run's checkpoints would otherwise count as newer than this run's
            trash = root.with_name(f".trash-checkpoints-{os.getpid()}")
            os.rename(root, trash)
            shutil.rmtree(trash)
    accelerator.wait_for_everyone()
    complete = _complete(root, "step-", "state.json") if root.is_dir() else []
    # What shapes the training (settings declared key=False, such as save_every or progress, do not), and the data
    # size: a resumed run must continue the same training, never mix two.
    # FSDP and DeepSpeed shard weights and optimizer state over the ranks: only accelerate's own state files hold them.
    sharded = accelerator.distributed_type.name in ("FSDP", "DEEPSPEED")
    state_format = cfg.checkpoint_state if cfg.checkpoint_state != "auto" else ("accelerate" if sharded else "own")
    settings = {**{f"trainer.{k}": v for k, v in key_data(cfg).items()}, "examples": n, "processes": world}
    if state_format == "accelerate":  # absent from the trainer's own checkpoints (written before the key existed)
        settings["checkpoint_state"] = state_format
    state = {"step": 0, "best": None, "best_step": None, "metrics": {}, "settings": settings}
    resuming = cfg.resume and bool(complete)
    ckpt_dir = complete[0] if complete else root / "none"
    model = task.model
    # Checkpoints keep what training changes: a LoRA run saves its adapters, not the frozen 7B base.
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    if resuming:
        state = json.loads((ckpt_dir / "state.json").read_text())
        _check_same_training(state.get("settings", {}), settings, ckpt_dir)
        accelerator.print(f"resuming from {ckpt_dir} (step {state['step']} of {total_steps})", flush=True)
        if state_format == "own":
            _load_weights(model, ckpt_dir / "model.safetensors", frozen)

    if cfg.gradient_checkpointing:
        # transformers 5 renamed it activation checkpointing; non-reentrant recomputation gives gradients to LoRA
        # adapters even though the frozen embeddings below them need none.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            raise UserError(f"trainer.gradient_checkpointing: {type(model).__name__} is not a transformers model")
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise UserError("the model has no trainable parameters")
    optimizer = _optimizer(named, cfg)
    # Built on the raw optimizer and stepped once per optimizer step by us (accelerate's wrapper would step it
    # once per process).
    scheduler = get_scheduler(
        cfg.scheduler,
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total_steps,
        scheduler_specific_kwargs=dict(cfg.scheduler_kwargs) or None,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    for frozen in task.frozen:
        frozen.to(accelerator.device).eval().requires_grad_(False)
    if resuming:
        if state_format == "accelerate":
            accelerator.load_state(ckpt_dir / "accelerate")  # weights, optimizer and RNG, each rank its shard
        else:
            optimizer.load_state_dict(torch.load(ckpt_dir / f"optimizer.rank{rank}.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(ckpt_dir / "scheduler.pt", weights_only=True))
        _set_rng_state(torch.load(ckpt_dir / f"rng.rank{rank}.pt", weights_only=True))

    def trained_weights() -> dict[str, torch.Tensor]:
        return {k: v for k, v in without_shared(accelerator.get_state_dict(model)).items() if k not in frozen}

    def save_checkpoint(step: int) -> None:
        nonlocal ckpt_dir, last_save
        weights = trained_weights() if state_format == "own" else None
        # One temp dir for all ranks, named by the main process (unique per process, so never another writer's).
        tmp = root / broadcast_object_list([f".tmp-step-{step}-{os.getpid()}"])[0]
        with _saving(tmp):
            if accelerator.is_main_process:
                tmp.mkdir(parents=True)
                if weights is not None:
                    save_file(weights, tmp / "model.safetensors")
                torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            accelerator.wait_for_everyone()
            if state_format == "accelerate":
                accelerator.save_state(tmp / "accelerate", safe_serialization=True)  # collective: every rank writes
            else:
                torch.save(optimizer.state_dict(), tmp / f"optimizer.rank{rank}.pt")
            torch.save(_rng_state(), tmp / f"rng.rank{rank}.pt")
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                # state.json is written last: a checkpoint without it is incomplete and never resumed from.
                (tmp / "state.json").write_text(json.dumps({**state, "step": step}))
                _publish(tmp, root / f"step-{step}", "step-", "state.json")
        ckpt_dir, last_save = root / f"step-{step}", time.monotonic()
        accelerator.wait_for_everyone()

    def run_eval(step: int) -> None:
        if task.evaluate is None:
            return
        model.eval()
        with torch.no_grad(), accelerator.autocast():
            metrics = task.evaluate(accelerator.unwrap_model(model))
        model.train()
        metrics = broadcast_object_list([metrics])[0]
        state["metrics"] = metrics
        logger.log({f"eval/{k}": v for k, v in metrics.items()}, step)
        if cfg.best_metric is None:
            return
        if cfg.best_metric not in metrics:
            raise UserError(f"trainer.best_metric: '{cfg.best_metric}' not among evaluated metrics {sorted(metrics)}")
        value, best = metrics[cfg.best_metric], state["best"]
        if best is None or (value > best if cfg.best_mode == "max" else value < best):
            state.update(best=value, best_step=step)
            weights = trained_weights()
            if accelerator.is_main_process:
                tmp = root / f".tmp-best-{step}-{os.getpid()}"
                with _saving(tmp):
                    tmp.mkdir(parents=True)
                    save_file(weights, tmp / "model.safetensors")
                    (tmp / "metrics.json").write_text(json.dumps({"step": step, **metrics}))
                    _publish(tmp, root / f"best-{step}", "best-", "metrics.json")
            accelerator.wait_for_everyone()

    model.train()
    progress = tqdm(
        total=total_steps, initial=state["step"], disable=not (show_progress(cfg.progress) and accelerator.is_main_process)
    )
    running: float | None = None
    last_save = time.monotonic()

    def micro_batches() -> Iterator[list[int]]:
        """This rank's share of every remaining optimizer step, micro-batch by micro-batch, in the seeded order."""
        for step in range(state["step"], total_steps):
            indices = batches_for_step(n, step, steps_per_epoch, global_batch, cfg.seed)
            for micro in range(cfg.grad_accum):
                start = (micro * world + rank) * cfg.batch_size
                yield indices[start : start + cfg.batch_size]

    # Workers load and collate ahead of the step, in the same order as the main process would.
    loader = iter(
        DataLoader(
            task.train_data,  # type: ignore[arg-type] - a Sequence is a map-style dataset
            batch_sampler=micro_batches(),  # type: ignore[arg-type] - iterated once
            collate_fn=task.collate,
            num_workers=cfg.num_workers,
            pin_memory=accelerator.device.type == "cuda",
            generator=torch.Generator(),  # its own: seeding workers must not draw from the RNG dropout uses
        )
    )
    for step in range(state["step"], total_steps):
        # [sum of micro losses, non-finite flag, a checkpoint is due by time]: reduced once, so every rank agrees.
        step_loss = torch.zeros(3, device=accelerator.device)
        if accelerator.is_main_process and 0 < cfg.save_minutes * 60 <= time.monotonic() - last_save:
            step_loss[2] = 1
        logs: dict[str, float] = {}
        for _ in range(cfg.grad_accum):
            batch = _to_device(next(loader), accelerator.device)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss, logs = task.loss(model, batch)
                if not torch.isfinite(loss.detach()):
                    step_loss[1] = 1  # still run backward: under DDP every rank must reach the same all-reduce
                accelerator.backward(loss)  # divided by grad_accum there
            step_loss[0] += loss.detach().float() / cfg.grad_accum
        if not accelerator.sync_gradients:
            raise RuntimeError("accelerate did not sync gradients at the last micro-batch of an optimizer step")
        grad_norm = (
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm) if cfg.max_grad_norm > 0 else None
        )
        if grad_norm is not None and not torch.isfinite(torch.as_tensor(grad_norm)):
            step_loss[1] = 1
        step_loss = accelerator.reduce(step_loss, reduction="sum")
        if step_loss[1] > 0:
            progress.close()
            where = f"last good checkpoint: {ckpt_dir}" if ckpt_dir.is_dir() else "no checkpoint was saved before it"
            where += "; rerun with a lower trainer.lr and trainer.resume=false to start over"
            raise NonFiniteLoss(f"loss became non-finite at step {step}; training stopped, {where}")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        mean_loss = step_loss[0].item() / world
        running = mean_loss if running is None else 0.9 * running + 0.1 * mean_loss
        progress.update(1)
        progress.set_postfix(loss=f"{running:.4f}")
        if done % cfg.log_every == 0 or done == total_steps:
            logger.log(
                {
                    "train/loss": mean_loss,
                    "train/lr": scheduler.get_last_lr()[0],
                    **{f"train/{k}": v for k, v in logs.items()},
                },
                done,
            )
        end_of_epoch = done % steps_per_epoch == 0 or done == total_steps
        if done == total_steps or (done % cfg.eval_every == 0 if cfg.eval_every > 0 else end_of_epoch):
            run_eval(done)
        by_steps = done % cfg.save_every == 0 if cfg.save_every > 0 else end_of_epoch
        if by_steps or step_loss[2] > 0:
            state["step"] = done
            save_checkpoint(done)
    progress.close()

    unwrapped = accelerator.unwrap_model(model)
    metrics = dict(state["metrics"])
    if cfg.best_metric is not None and state["best_step"] is not None:
        accelerator.wait_for_everyone()
        best_dir = _complete(root, "best-", "metrics.json")[0]
        _load_weights(unwrapped, best_dir / "model.safetensors", frozen)
        metrics = json.loads((best_dir / "metrics.json").read_text())
    if running is not None:
        metrics["train/loss"] = running
    return FitResult(model=unwrapped, metrics=metrics, steps=total_steps)

"""Trainer overhead: common.trainer.fit against a bare PyTorch loop, same tiny Llama, same batches, same run.

Prints the wall-time ratio (goal <= 1.05) and the achieved FLOP/s of a training step against a matmul peak measured
on this machine. Usage: python bench/trainer_overhead.py [--steps 40]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from common.config import ModelConfig, TrainerConfig
from common.models import load_causal_lm
from common.trainer import Task, batches_for_step, fit


def lm_loss(model, batch):
    out = model(input_ids=batch, labels=batch)
    return out.loss, {}


def bare_loop(model, data, cfg: TrainerConfig) -> float:
    from transformers import get_scheduler

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    sched = get_scheduler(cfg.scheduler, opt, num_warmup_steps=0, num_training_steps=cfg.max_steps)
    steps_per_epoch = -(-len(data) // cfg.batch_size)
    start = time.perf_counter()
    for step in range(cfg.max_steps):
        idx = batches_for_step(len(data), step, steps_per_epoch, cfg.batch_size, cfg.seed)
        loss, _ = lm_loss(model, torch.stack([data[i] for i in idx]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def matmul_peak(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start)


def step_flops(model, batch) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        lm_loss(model, batch)[0].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp())
    cfg = TrainerConfig(
        max_steps=args.steps, batch_size=8, lr=1e-3, progress=False, save_every=10**9, mixed_precision="no"
    )
    _, tok = load_causal_lm(ModelConfig(name_or_path="tiny-llama"), cache)
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(5, len(tok), (128,), generator=g) for _ in range(8 * args.steps)]

    bare, ours = [], []
    for r in range(args.repeats):  # interleaved, best of N: these machines are noisy
        model, _ = load_causal_lm(ModelConfig(name_or_path="tiny-llama", dtype="float32"), cache)
        bare.append(bare_loop(model, data, cfg))
        model, _ = load_causal_lm(ModelConfig(name_or_path="tiny-llama", dtype="float32"), cache)
        task = Task(model=model, train_data=data, collate=torch.stack, loss=lm_loss)
        start = time.perf_counter()
        fit(task, cfg, cache / f"run{r}")
        ours.append(time.perf_counter() - start)
    t_bare, t_ours = min(bare), min(ours)
    flops = step_flops(model, torch.stack(data[:8]))
    peak = matmul_peak()
    achieved = flops * args.steps / t_ours
    print(f"bare loop     : {t_bare:.3f} s for {args.steps} steps")
    print(f"common.trainer: {t_ours:.3f} s for {args.steps} steps (includes Accelerator setup)")
    print(f"overhead ratio trainer/bare = {t_ours / t_bare:.3f}  (goal <= 1.05)")
    print(
        f"training step: {flops / 1e9:.2f} GFLOP; achieved {achieved / 1e9:.2f} GFLOP/s; "
        f"matmul peak {peak / 1e9:.2f} GFLOP/s; ratio = {achieved / peak:.3f}"
    )


if __name__ == "__main__":
    main()

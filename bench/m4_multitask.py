"""One M4 model for 10 genes against 10 single-task gated-ABMIL runs, same bags, same trainer and schedule.

The wall-time ratio M4 / (10 x ABMIL) is what multi-task learning saves on a cohort (the official code's shape gives
about 0.7 on 2 CPU cores). Random 2048-d bags stand in for RetCCL features; only time is measured.
Usage: python bench/m4_multitask.py [--bags 40] [--instances 300] [--epochs 1]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common.config import TrainerConfig  # noqa: E402
from common.trainer import Task, fit  # noqa: E402
from methods.m4.commands import bce_loss  # noqa: E402
from methods.m4.data import collate_bag  # noqa: E402
from methods.m4.model import build_model  # noqa: E402


def train_seconds(model: torch.nn.Module, bags: list, out: Path, cfg: TrainerConfig) -> float:
    start = time.perf_counter()
    fit(Task(model=model, train_data=bags, collate=collate_bag, loss=bce_loss), cfg, out)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bags", type=int, default=40)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--genes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(args.instances, 2048, generator=g) for _ in range(args.bags)]
    labels = [torch.randint(0, 2, (args.genes,), generator=g).float() for _ in range(args.bags)]
    cfg = TrainerConfig(epochs=args.epochs, batch_size=1, lr=1e-4, weight_decay=4e-5, optimizer="adam",
                        scheduler="cosine_with_min_lr", scheduler_kwargs={"min_lr_rate": 0.1}, max_grad_norm=0,
                        progress=False, save_every=10**9, mixed_precision="no")
    out = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    t_m4 = train_seconds(build_model("m4", tasks=args.genes), list(zip(feats, labels)), out / "m4", cfg)
    t_single = 0.0
    for gene in range(args.genes):
        torch.manual_seed(0)
        bags = [(f, y[gene : gene + 1]) for f, y in zip(feats, labels)]
        t_single += train_seconds(build_model("amil"), bags, out / f"amil{gene}", cfg)
    print(f"{args.bags} bags x {args.instances} instances, {args.genes} genes, {args.epochs} epoch(s)")
    print(f"M4 (all genes): {t_m4:.1f} s   {args.genes} x ABMIL: {t_single:.1f} s")
    print(f"wall-time ratio M4 / single-task runs = {t_m4 / t_single:.2f}  (official code's shape: about 0.7)")


if __name__ == "__main__":
    main()

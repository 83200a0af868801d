"""One M4 run for 10 genes against 10 single-task gated-ABMIL runs (one per gene), same bags, same run.

Both go through `methods.m4.train.fit_model`, the function `python -m methods.m4 train` uses: conf/m4.yaml's trainer
(Adam, cosine to 0.1x, one slide per step, summed BCE), a validation pass per epoch for best-epoch selection, the
same CPU thread setting as `train` (train.cpu_threads). Random 2048-d bags of about 500 instances stand in for RetCCL
features (only time is measured); they are written as pt_files/ so loading is timed too.

Prints the wall-time ratio M4 / (10 x ABMIL): what multi-task learning saves on a cohort (the official code's shape
gives about 0.7 on 2 CPU cores; < 1 means the single M4 run is cheaper). With --repeats > 1 each run's best time is
kept (the machine is noisy) and the order alternates.
Usage: python bench/m4_multitask.py [--bags 60] [--val-bags 8] [--instances 500] [--epochs 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from common.config import compose
from methods.m4 import data as m4data
from methods.m4.extract import output_paths
from methods.m4.model import model_kwargs
from methods.m4.train import ModelRun, fit_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bags", type=int, default=60, help="training bags")
    parser.add_argument("--val-bags", type=int, default=8)
    parser.add_argument("--instances", type=int, default=500, help="mean bag size (sizes vary +-20%%)")
    parser.add_argument("--genes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: train.cpu_threads of conf/m4.yaml)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")

    work = Path(tempfile.mkdtemp())
    cfg = compose(
        "m4", f"trainer.epochs={args.epochs}", "trainer.progress=false", "logger.kind=none", f"cache_dir={work}"
    )
    threads = args.threads or cfg.train.cpu_threads or torch.get_num_threads()
    torch.set_num_threads(threads)  # as the train command does before training

    n = args.bags + args.val_bags
    rng = np.random.default_rng(0)
    genes = [f"G{g}" for g in range(args.genes)]
    slide_ids = [f"S{i:03d}" for i in range(n)]
    features_dir = work / "features"
    sizes = rng.integers(int(args.instances * 0.8), int(args.instances * 1.2) + 1, n)
    for sid, size in zip(slide_ids, sizes, strict=True):
        pt = output_paths(features_dir, sid)[1]
        pt.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torch.from_numpy(rng.standard_normal((int(size), 2048), dtype=np.float32)), pt)
    y = (rng.random((n, args.genes)) < 0.4).astype(np.float32)
    labels = m4data.Labels(slide_ids, slide_ids, genes, y)
    split = m4data.Split("bench", list(range(args.bags)), list(range(args.bags, n)), [])

    def run_seconds(name: str, cols: list[int], tag: str) -> float:
        run = ModelRun(name, model_kwargs(name, cfg.mil, 2048, len(cols)), cols, split, work / "runs" / tag)
        start = time.perf_counter()
        fit_model(cfg, run, labels, features_dir)
        return time.perf_counter() - start

    all_cols = list(range(args.genes))
    t_m4: list[float] = []
    t_gene: list[list[float]] = [[] for _ in all_cols]

    def m4(r: int) -> None:
        t_m4.append(run_seconds("m4", all_cols, f"m4_{r}"))

    def singles(r: int) -> None:
        for c in all_cols:
            t_gene[c].append(run_seconds("amil", [c], f"amil_{r}_{c}"))

    for r in range(args.repeats):
        for step in (m4, singles) if r % 2 == 0 else (singles, m4):  # alternate the order: the machine is noisy
            step(r)
    m4_best, single_best = min(t_m4), sum(min(t) for t in t_gene)
    print(
        f"{args.bags} training + {args.val_bags} validation bags of ~{args.instances} x 2048, {args.genes} genes, "
        f"{args.epochs} epochs, {threads} thread(s), best of {args.repeats}"
    )
    print(
        f"  M4, one run for all genes: {m4_best:.1f} s   {args.genes} single-task ABMIL runs: {single_best:.1f} s "
        f"({single_best / args.genes:.1f} s each)"
    )
    print(f"wall-time ratio M4 / single-task runs = {m4_best / single_best:.2f}  (official code's shape: about 0.7)")


if __name__ == "__main__":
    main()

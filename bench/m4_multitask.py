"""One M4 run for 10 genes against 10 single-task gated-ABMIL runs (one per gene), same bags, same run.

Both go through `methods.m4.train.fit_model`, the function `python -m methods.m4 train` uses: conf/m4.yaml's trainer
(Adam, cosine to 0.1x, one slide per step, summed BCE), a validation pass per epoch for best-epoch selection, the
same CPU thread setting as `train` (train.cpu_threads). Random 2048-d bags of about 500 instances stand in for RetCCL
features (only time is measured); they are written as pt_files/ so loading is timed too.

Prints the wall-time ratio M4 / (10 x ABMIL): what multi-task learning saves on a cohort (goal <= 0.55; < 1 means the
single M4 run is cheaper). So that a busy machine cannot pass for a fast form: the load average and core count are
printed before and after, the order of the two alternates every repeat, and each repeat gives one ratio of runs back
to back; the median and spread (min-max) of those ratios are reported.
Usage: python bench/m4_multitask.py [--bags 60] [--val-bags 8] [--instances 500] [--epochs 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from common.bench import load, spread
from common.config import compose
from methods.m4 import data as m4data
from methods.m4 import kernels
from methods.m4.extract import output_paths
from methods.m4.model import model_kwargs
from methods.m4.train import ModelRun, fit_model

GOAL = 0.55  # one M4 run for all genes, as a fraction of the single-task runs' wall time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bags", type=int, default=60, help="training bags")
    parser.add_argument("--val-bags", type=int, default=8)
    parser.add_argument("--instances", type=int, default=500, help="mean bag size (sizes vary +-20%%)")
    parser.add_argument("--genes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: train.cpu_threads of conf/m4.yaml)")
    args = parser.parse_args()
    print(f"before: {load()}")
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")

    work = Path(tempfile.mkdtemp())
    cfg = compose(
        "m4", f"trainer.epochs={args.epochs}", "trainer.progress=false", "logger.kind=none", f"cache_dir={work}"
    )
    threads = args.threads or cfg.train.cpu_threads or torch.get_num_threads()
    torch.set_num_threads(threads)  # as the train command does before training
    kernels.use(cfg.train.cpu_gemm)

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
    t_single = [sum(t) for t in zip(*t_gene, strict=True)]  # per repeat: all single-task runs
    ratios = [m / s for m, s in zip(t_m4, t_single, strict=True)]
    print(
        f"{args.bags} training + {args.val_bags} validation bags of ~{args.instances} x 2048, {args.genes} genes, "
        f"{args.epochs} epochs, {threads} thread(s), CPU GEMM {kernels.chosen()}, {args.repeats} alternating repeats"
    )
    print(f"  M4, one run for all genes: {spread(t_m4, ' s', 1)}")
    print(f"  {args.genes} single-task ABMIL runs: {spread(t_single, ' s', 1)}")
    verdict = "met" if statistics.median(ratios) <= GOAL else "NOT met"
    print(f"wall-time ratio M4 / single-task runs: {spread(ratios, '')}  goal <= {GOAL}: {verdict}")
    print(f"after: {load()}")


if __name__ == "__main__":
    main()

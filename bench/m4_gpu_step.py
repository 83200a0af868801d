"""M4 training on a GPU: one step on a 10,000 x 1,024 bag (default expert form against one after another), and whole
training runs through the trainer reading bags from disk, with and without DataLoader workers.

1. Step: forward + summed BCE + backward under bf16 autocast (what trainer.mixed_precision=auto picks on CUDA), the
   bag already on the device; ms per step, the two expert forms interleaved.
2. Runs: `methods.m4.train.fit_model` (the `train` command's function) on `--bags` bags of that size written as
   pt_files/, trainer.num_workers 0 against 2; ms per optimizer step including loading, alternating, repeated.

Without CUDA it says so and exits 0; `--device cpu --tiny` runs the same code on a small bag (a smoke test).
Usage: python bench/m4_gpu_step.py [--instances 10000] [--features 1024] [--bags 32] [--repeats 3] [--device cpu --tiny]
       [--json PATH]   (also the figures as JSON, which bench/gpu_all.sh reads)
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

from common.bench import Figures, load, spread
from common.config import compose
from methods.m4 import data as m4data
from methods.m4.extract import output_paths
from methods.m4.model import m4, transfer_experts
from methods.m4.train import ModelRun, bce_loss, fit_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_ms(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    device = x.device
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = bce_loss()(model, (x, y))[0]
        loss.backward()
        model.zero_grad(set_to_none=True)
    _sync(device)
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10000)
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--bags", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="a 500 x 64 bag, 4 bags: checks the code, not the GPU")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    figures = Figures(args.json, "m4_gpu_step")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: the M4 GPU step figures are not measured (--device cpu --tiny runs the code on a CPU)")
        figures.note("no CUDA")
        return
    if args.tiny:
        args.instances, args.features, args.bags = 500, 64, 4
    device = torch.device(args.device)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"before: {load()}; torch {torch.__version__}; {name}")
    figures.device(f"{name}; bag {args.instances} x {args.features}, {args.bags} bags, {args.repeats} repeats")

    torch.manual_seed(0)
    default = m4(feat_input=args.features, tasks=10).to(device)
    sequential = transfer_experts(default, batched=False)
    x = torch.randn(args.instances, args.features, device=device)
    y = torch.randint(0, 2, (10,), device=device).float()
    forms = {"default (batched)": default, "one after another": sequential}
    times: dict[str, list[float]] = {k: [] for k in forms}
    for model in forms.values():
        step_ms(model, x, y, 3)  # warm-up: kernels, autotuning, allocator
    for r in range(args.repeats):
        for key in list(forms)[:: 1 if r % 2 == 0 else -1]:
            times[key].append(step_ms(forms[key], x, y, 10))
    print(f"M4 training step, bag {args.instances} x {args.features}, 10 genes, bf16 autocast on CUDA:")
    for key, ts in times.items():
        print(f"  {key}: {spread(ts, ' ms', 1)}")
        figures.spread(f"step, {key}", ts, "ms")
    ratios = [s / d for s, d in zip(times["one after another"], times["default (batched)"], strict=True)]
    print(f"  one-after-another / default: {spread(ratios)}")
    figures.spread("step, one after another / default", ratios, "x")

    work = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    ids = [f"S{i:03d}" for i in range(args.bags + 2)]
    for sid in ids:
        pt = output_paths(work / "features", sid)[1]
        pt.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torch.from_numpy(rng.standard_normal((args.instances, args.features), dtype=np.float32)), pt)
    genes = [f"G{g}" for g in range(10)]
    labels = m4data.Labels(ids, ids, genes, (rng.random((len(ids), 10)) < 0.4).astype(np.float32))
    split = m4data.Split("bench", list(range(args.bags)), list(range(args.bags, len(ids))), [])
    run_ms: dict[int, list[float]] = {0: [], 2: []}
    for r in range(args.repeats):
        for workers in (0, 2) if r % 2 == 0 else (2, 0):
            cfg = compose(
                "m4",
                "trainer.epochs=1",
                "trainer.progress=false",
                "logger.kind=none",
                f"trainer.num_workers={workers}",
                f"cache_dir={work}",
                f"trainer.mixed_precision={'bf16' if device.type == 'cuda' else 'no'}",
            )
            kwargs = {"feat_input": args.features, "tasks": 10, "num_expert": 5, "hidden": 512}
            run = ModelRun("m4", kwargs, list(range(10)), split, work / "runs" / f"{r}-{workers}")
            start = time.perf_counter()
            fit_model(cfg, run, labels, work / "features")
            run_ms[workers].append((time.perf_counter() - start) / args.bags * 1000)
    print(f"training runs through the trainer, {args.bags} bags from disk, 1 epoch (incl. validation, checkpoint):")
    for workers, ts in run_ms.items():
        print(f"  trainer.num_workers={workers}: {spread(ts, ' ms per step', 1)}")
        figures.spread(f"trainer run, num_workers={workers}", ts, "ms/step")
    worker_ratios = [a / b for a, b in zip(run_ms[0], run_ms[2], strict=True)]
    print(f"  num_workers=0 / num_workers=2: {spread(worker_ratios)}")
    figures.spread("trainer run, num_workers=0 / num_workers=2", worker_ratios, "x")
    print(f"after: {load()}")


if __name__ == "__main__":
    main()

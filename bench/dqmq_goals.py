"""DQMQ's goals on mixed-quality digits (the embedded default, one run per seed), the onnxruntime latency of its
W8A8 export against the FP32 export, and its training step time against fixed-precision LSQ QAT on the same network.

Goals (issues 10 and 23): the benchmark has room (full precision loses >= 5 points from clean to corrupted, W4A4 >= 3
points against full precision on heavy corruption); DQMQ within 1 accuracy point of W8A8 at no more than half its
BitOps; its bits clean vs heavily corrupted (both means printed); DQMQ - static mixed precision at matched mean
BitOps, paired on the same test images over the seeds (clean, corrupted, heavy), the interval whichever way it goes;
the training step time ratio DQMQ / fixed-precision LSQ <= 1.5.

Step time: one optimizer step (loss, backward, AdamW step) on batches of the training mixture, DQMQ (the trained
model of the run, put in each training phase: warm-up, search, fine-tune) against W4A4 LSQ on the same network from
the same full-precision weights, the two interleaved (the order alternates every repeat), each pair one ratio;
median and spread (min-max) per phase, and the mean over phases weighted by their share of training. Load average and
cores are printed before and after, so that a busy machine cannot pass for a fast method.

`--resnet20` also times ResNet-20 at CIFAR shapes with a random per-input policy (the worst case of grouping).

Usage: python bench/dqmq_goals.py [--seeds 0,1,2] [--repeats 9] [--resnet20] [override ...]   (trains the default once
       per seed first; the goals of every seed, then their mean and range, and the paired DQMQ - static interval)
       python bench/dqmq_goals.py --run-dir <run of seed 0> <run of seed 1> ...     (finished runs' goals)
       python bench/dqmq_goals.py --run-dir <runs> --ablation <runs of the same seeds, one setting changed>
                                  (DQMQ with the setting minus without, paired, e.g. quant.bit_bn=true)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common.bench import spread
from common.checkpoint import load_module
from common.config import as_dict, compose
from common.loggers import NullLogger
from common.results import write_results
from methods.dqmq import commands
from methods.dqmq import train as dqtrain
from methods.dqmq.baselines import task_loss
from methods.dqmq.model import QuantModel
from methods.dqmq.policy import hybrid_loss
from methods.dqmq.stats import paired_interval, per_image_difference


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores, {torch.get_num_threads()} thread(s)"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def goals(m: dict[str, float], heavy: int) -> None:
    acc_gap = 100 * (m["dqmq/acc"] - m["w8a8/acc"])
    cost = m["dqmq/bitops_ratio"] / m["w8a8/bitops_ratio"]
    print("\n## accuracy and BitOps against W8A8 (mixed-quality test set, weighted as the training mixture)")
    print(f"  DQMQ {m['dqmq/acc']:.4f}, W8A8 {m['w8a8/acc']:.4f}: {acc_gap:+.2f} points (goal >= -1)")
    print(f"  DQMQ BitOps / W8A8 BitOps: {cost:.3f} (goal <= 0.5)   -> {verdict(acc_gap >= -1 and cost <= 0.5)}")
    if "w4a4/acc" in m:
        print(f"  for reference W4A4: {m['w4a4/acc']:.4f} at {m['w4a4/bitops_ratio'] / m['w8a8/bitops_ratio']:.3f}")
    print(f"\n## DQMQ's mean bits, clean vs heavily corrupted (severity >= {heavy})")
    for kind in ("wbits", "abits"):
        clean, worst = m[f"dqmq/{kind}_clean"], m[f"dqmq/{kind}_heavy"]
        print(
            f"  {'weights' if kind == 'wbits' else 'activations'}: clean {clean:.3f}, heavy {worst:.3f} ({worst - clean:+.3f})"
        )
    print(f"  BitOps / FP: clean {m['dqmq/bitops_ratio_clean']:.5f}, heavy {m['dqmq/bitops_ratio_heavy']:.5f}")
    print("\n## DQMQ vs static mixed precision (EdMIPS-style, quality-agnostic) at matched mean BitOps")
    if "static/budget" in m:  # a train run's (an eval run's metrics do not have it)
        print(
            f"  budget (DQMQ's mean on the training data) {m['static/budget']:.5f} of FP; static's configuration "
            f"{m['static/train_bitops_ratio']:.5f}"
        )
    print(f"  on the test mixture: DQMQ {m['dqmq/bitops_ratio']:.5f}, static {m['static/bitops_ratio']:.5f} of FP")
    for group in ("corrupted", "heavy", "clean"):
        d, s = m[f"dqmq/acc_{group}"], m[f"static/acc_{group}"]
        print(f"  accuracy {group:9s}: DQMQ {d:.4f}, static {s:.4f}: {100 * (d - s):+.2f} points")


def benchmark_checks(runs: dict[int, dict[str, float]]) -> None:
    """Whether the benchmark has room for the method: quantization must cost accuracy on corrupted inputs, and
    corruption must cost accuracy at full precision."""
    print("\n## the benchmark itself (full precision and W4A4), per seed")
    for seed, m in runs.items():
        drop = 100 * (m["fp/acc_clean"] - m["fp/acc_corrupted"])
        line = f"  seed {seed}: FP clean - corrupted {drop:+.2f} points (goal >= 5) -> {verdict(drop >= 5)}"
        if "w4a4/acc_heavy" in m:
            cost = 100 * (m["fp/acc_heavy"] - m["w4a4/acc_heavy"])
            line += f"; FP - W4A4 on heavy corruption {cost:+.2f} points (goal >= 3) -> {verdict(cost >= 3)}"
        print(line)


def paired(dirs: dict[int, Path], a: str = "dqmq", b: str = "static", b_dirs: dict[int, Path] | None = None) -> None:
    """a - b on the same test images (per seed: same split, levels and noise draws), clean, corrupted, heavy: the
    mean over seeds and its paired bootstrap interval (images resampled within each seed), and every seed's value.
    With `b_dirs`, b is read from those runs (same seeds and data: an ablation of a setting)."""
    name = f"{a} - {b}" if b_dirs is None else f"{a} of the --ablation runs - {b} of the --run-dir runs"
    b_dirs = b_dirs or dirs
    print(f"\n## {name}, paired on the same test images, points (95% bootstrap interval over images)")
    loaded = {}
    for seed, run in dirs.items():
        rows = json.loads((run / "levels.json").read_text())[a]
        if b_dirs is not dirs and (seed not in b_dirs or _data(run) != _data(b_dirs[seed])):
            print(
                f"{run}: no --run-dir run of seed {seed} with the same data, so nothing to pair it with",
                file=sys.stderr,
            )
            raise SystemExit(2)
        with np.load(run / "correct.npz") as ca, np.load(b_dirs[seed] / "correct.npz") as cb:
            loaded[seed] = (rows, ca[a], cb[b])
    heavy = compose("dqmq").data.heavy_severity
    groups = {
        "clean": lambda r: r["corruption"] == "clean",
        "corrupted": lambda r: r["corruption"] != "clean",
        f"heavy (severity >= {heavy})": lambda r: r["corruption"] != "clean" and r["severity"] >= heavy,
    }
    for group, member in groups.items():
        diffs = []
        for rows, ca, cb in loaded.values():
            keep = np.array([member(r) for r in rows])
            diffs.append(per_image_difference(ca, cb, keep))
        p = paired_interval(diffs)
        listed = ", ".join(f"{100 * v:+.2f}" for v in p.per_seed)
        above = "above 0" if p.low > 0 else "below 0" if p.high < 0 else "includes 0"
        print(
            f"  {group:22s}: {100 * p.mean:+.2f} [{100 * p.low:+.2f}, {100 * p.high:+.2f}] ({above}); per seed {listed}"
        )


def _data(run: Path) -> tuple:
    config = json.loads((run / "results.json").read_text())["config"]
    return config["seed"], config["data"]


def step_seconds(model: torch.nn.Module, loss, batch: dict, opt: torch.optim.Optimizer, calls: int | None) -> float:
    if calls is not None:
        model.calls.fill_(calls)
    start = time.perf_counter()
    value, _ = loss(model, batch)
    value.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def step_times(run_dir: Path, overrides: list[str], repeats: int) -> None:
    cfg = compose("dqmq", *overrides)
    if cfg.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(cfg.cpu_threads)
    s = dqtrain.setup(cfg)
    dq, meta = load_module(run_dir / "dqmq" / "model")
    fixed = QuantModel(**{**meta["kwargs"], "method": "fixed", "candidates": [4]})
    fp_dir = dqtrain.pretrained_fp(cfg, s, run_dir, NullLogger())
    fixed.net.load_state_dict(load_module(fp_dir)[0].net.state_dict(), strict=False)
    dq.train(), fixed.train()
    g = torch.Generator().manual_seed(0)
    batches = [
        s.collate([s.train_set[i] for i in torch.randperm(len(s.train_set), generator=g)[: cfg.trainer.batch_size]])
        for _ in range(repeats)
    ]
    total = 1000
    p = cfg.policy
    phases = {  # loss calls (out of 1000) inside each phase, and the phase's share of training
        "warm-up": (int(total * p.warmup_fraction / 2), p.warmup_fraction),
        "search": (
            int(total * (p.warmup_fraction + 1 - p.finetune_fraction) / 2),
            1 - p.warmup_fraction - p.finetune_fraction,
        ),
        "fine-tune": (int(total * (1 - p.finetune_fraction / 2)), p.finetune_fraction),
    }
    opt_d, opt_f = torch.optim.AdamW(dq.parameters(), 1e-5), torch.optim.AdamW(fixed.parameters(), 1e-5)
    loss_d = hybrid_loss(p, total)
    print(
        f"\n## training step time, {cfg.net.arch} at {cfg.data.image_size} px, batch {cfg.trainer.batch_size}: DQMQ / "
        f"W4A4 LSQ, {repeats} interleaved pairs per phase\nbefore: {load()}"
    )
    (
        step_seconds(dq, loss_d, batches[0], opt_d, phases["search"][0]),
        step_seconds(fixed, task_loss, batches[0], opt_f, None),
    )
    weighted = 0.0
    for name, (calls, share) in phases.items():
        t_d, t_f = [], []
        for r, batch in enumerate(batches):
            pair = [(t_d, (dq, loss_d, opt_d, calls)), (t_f, (fixed, task_loss, opt_f, None))]
            for times, (model, loss, opt, at) in pair if r % 2 == 0 else pair[::-1]:
                times.append(step_seconds(model, loss, batch, opt, at))
        ratios = [d / f for d, f in zip(t_d, t_f, strict=True)]
        weighted += share * statistics.median(ratios)
        print(f"  {name:9s} ({share:.0%} of steps): DQMQ {spread(t_d, ' s', 4)}, W4A4 {spread(t_f, ' s', 4)}")
        print(f"  {'':9s} ratio {spread(ratios)}")
    print(
        f"  mean over training (phases weighted by their share): {weighted:.2f}x (goal <= 1.5) -> {verdict(weighted <= 1.5)}"
    )
    print(f"after: {load()}")


def across_seeds(runs: dict[int, dict[str, float]]) -> None:
    """The goals' quantities per seed, their mean and range: on digits, one seed's differences are within the noise."""
    quantities = {
        "DQMQ - W8A8 accuracy, points (mixed)": lambda m: 100 * (m["dqmq/acc"] - m["w8a8/acc"]),
        "DQMQ BitOps / W8A8": lambda m: m["dqmq/bitops_ratio"] / m["w8a8/bitops_ratio"],
        "DQMQ weight bits, heavy - clean": lambda m: m["dqmq/wbits_heavy"] - m["dqmq/wbits_clean"],
        "DQMQ activation bits, heavy - clean": lambda m: m["dqmq/abits_heavy"] - m["dqmq/abits_clean"],
        "DQMQ - static accuracy, points (corrupted)": lambda m: (
            100 * (m["dqmq/acc_corrupted"] - m["static/acc_corrupted"])
        ),
        "DQMQ - static accuracy, points (heavy)": lambda m: 100 * (m["dqmq/acc_heavy"] - m["static/acc_heavy"]),
        "DQMQ - W4A4 accuracy, points (mixed)": lambda m: 100 * (m["dqmq/acc"] - m["w4a4/acc"]),
    }
    print(f"\n## across seeds {', '.join(map(str, runs))}")
    for label, value in quantities.items():
        values = [value(m) for m in runs.values()]
        listed = ", ".join(f"{v:+.3f}" for v in values)
        print(
            f"  {label}: mean {statistics.mean(values):+.3f} (min {min(values):+.3f}, max {max(values):+.3f}; {listed})"
        )


def worst_case(arch: str, size: int, chans: int, batch_size: int, repeats: int) -> None:
    """A larger network, where the per-input policy's grouped passes weigh less against the convolutions: DQMQ's search
    step with a random policy (every candidate in every layer of every batch: the worst case of grouping) against W4A4,
    on random images of the shape."""
    cfg = compose("dqmq")
    kwargs = dict(
        arch=arch,
        num_classes=10,
        in_chans=chans,
        image_size=size,
        candidates=sorted(cfg.quant.bits),
        mean=[0.5] * chans,
        std=[0.25] * chans,
    )
    torch.manual_seed(0)
    dq, fixed = QuantModel(method="dqmq", **kwargs), QuantModel(method="fixed", **{**kwargs, "candidates": [4]})
    torch.nn.init.normal_(dq.policy.head.weight, std=3.0)  # choices that vary from input to input
    batch = {"x": torch.rand(batch_size, chans, size, size), "y": torch.randint(0, 10, (batch_size,))}
    dq.policy.fit_features(batch["x"])
    dq.train(), fixed.train()
    opt_d, opt_f = torch.optim.AdamW(dq.parameters(), 1e-5), torch.optim.AdamW(fixed.parameters(), 1e-5)
    loss_d, calls = hybrid_loss(cfg.policy, 1000), 500
    step_seconds(dq, loss_d, batch, opt_d, calls), step_seconds(fixed, task_loss, batch, opt_f, None)
    t_d, t_f = [], []
    for r in range(repeats):
        pair = [(t_d, (dq, loss_d, opt_d, calls)), (t_f, (fixed, task_loss, opt_f, None))]
        for times, (model, loss, opt, at) in pair if r % 2 == 0 else pair[::-1]:
            times.append(step_seconds(model, loss, batch, opt, at))
    ratios = [d / f for d, f in zip(t_d, t_f, strict=True)]
    print(f"\n## {arch} at {size} px, batch {batch_size}, random per-input policy (worst case), search step")
    print(f"  DQMQ {spread(t_d, ' s', 4)}, W4A4 {spread(t_f, ' s', 4)}; ratio {spread(ratios)}; {load()}")


def onnx_latency(run_dir: Path, overrides: list[str], repeats: int) -> None:
    """onnxruntime latency of the exported W8A8 model (run with onnxruntime's int8 kernels) against the FP32 export
    of the same run, on this CPU (one thread): each exported by the `export` command, timed on the same clean test
    images, the two interleaved (the order alternating every repeat), one ratio per pair; batch 1 and 256."""
    from methods.dqmq.onnx_export import OnnxDeployment

    sessions = {}
    for name in ("w8a8", "fp"):
        out = Path(tempfile.mkdtemp(prefix=f"dqmq_onnx_{name}_"))
        cfg = compose("dqmq", *overrides, "command=export", f"export.run_dir={run_dir}", f"export.method={name}")
        commands.export(cfg, out)
        sessions[name] = OnnxDeployment(out / "onnx", integer_kernels=True).configs[0]  # int8 kernels, VNNI or not
    cfg = compose("dqmq", *overrides)
    x = dqtrain.setup(cfg, with_train=False).images.test_x.float().numpy() / 255
    print(f"\n## onnxruntime latency, W8A8 QDQ export / FP32 export ({len(x)} clean test images)\nbefore: {load()}")
    for batch in (1, 256):
        inputs = [x[i : i + batch] for i in range(0, min(len(x), 64 * batch), batch)]
        times: dict[str, list[float]] = {"w8a8": [], "fp": []}
        for r in range(repeats + 1):
            for name in ("w8a8", "fp") if r % 2 == 0 else ("fp", "w8a8"):
                start = time.perf_counter()
                for chunk in inputs:
                    sessions[name].run(["logits"], {"image": chunk})
                if r:  # the first round warms up
                    times[name].append((time.perf_counter() - start) / sum(len(c) for c in inputs) * 1e6)
        ratios = [q / f for q, f in zip(times["w8a8"], times["fp"], strict=True)]
        print(
            f"  batch {batch:3d}: W8A8 {spread(times['w8a8'], ' us/image', 1)}, FP32 {spread(times['fp'], ' us/image', 1)}; "
            f"ratio W8A8 / FP32 {spread(ratios)}"
        )
    print(f"after: {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, nargs="+", help="finished train runs, one per seed (default: train)")
    parser.add_argument("--seeds", help="comma-separated seeds, one training each (default: the config's seed)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--no-step-time", action="store_true", help="skip the training step timing")
    parser.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime latency of the exports")
    parser.add_argument("--resnet20", action="store_true", help="also time ResNet-20 at 32 px (CIFAR shapes)")
    parser.add_argument(
        "--ablation", type=Path, nargs="+", help="runs of a changed setting, one per seed: their DQMQ - --run-dir's"
    )
    parser.add_argument("overrides", nargs="*", help="config overrides (as for python -m methods.dqmq train)")
    args = parser.parse_args()
    print(f"before: {load()}; torch {torch.__version__}")
    heavy = compose("dqmq", *args.overrides).data.heavy_severity
    runs, dirs = {}, {}
    for run in args.run_dir or []:
        results = json.loads((run / "results.json").read_text())
        seed = results["config"]["seed"]
        runs[seed], dirs[seed] = results["metrics"], run
    if args.ablation:  # only the paired difference of DQMQ with the setting changed, against the same seeds' runs
        changed = {json.loads((r / "results.json").read_text())["config"]["seed"]: r for r in args.ablation}
        paired(changed, "dqmq", "dqmq", b_dirs=dirs)
        return
    seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else [compose("dqmq", *args.overrides).seed]
    for seed in [] if args.run_dir else seeds:
        overrides = [*args.overrides, f"seed={seed}"]
        dirs[seed] = Path(tempfile.mkdtemp(prefix=f"dqmq_goals_seed{seed}_"))
        start = time.perf_counter()
        cfg = compose("dqmq", *overrides, "command=train")
        runs[seed] = commands.train(cfg, dirs[seed])
        write_results(dirs[seed], "dqmq train", runs[seed], as_dict(cfg))  # as the CLI: --run-dir reads it
        print(f"\n# seed {seed}: trained in {time.perf_counter() - start:.0f} s ({dirs[seed]}); {load()}")
    for seed, m in runs.items():
        print(f"\n# seed {seed} ({dirs[seed]})\n{dqtrain.table(m)}")
        goals(m, heavy)
    benchmark_checks(runs)
    if len(runs) > 1:
        across_seeds(runs)
    paired(dirs)
    first = next(iter(runs))
    if not args.no_onnx:
        onnx_latency(dirs[first], [*args.overrides, f"seed={first}"], args.repeats)
    if not args.no_step_time:
        step_times(dirs[first], [*args.overrides, f"seed={first}"], args.repeats)
    if args.resnet20:
        worst_case("resnet20", 32, 3, 128, args.repeats)


if __name__ == "__main__":
    main()

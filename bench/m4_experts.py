"""M4's experts in the default form (`BatchedMPExperts`) against one after another (`SequentialMPExperts`, the official
code's form), same weights (moved over with `transfer_experts`), same run.

The default form sends its matrix products through `methods.m4.kernels.linear`: the CPU GEMM (PyTorch's BLAS or
oneDNN) that a one-time measurement found faster on this machine; the official form uses `nn.Linear` as the official
code does. So that the two sources of the gain can be told apart, the experts' first Linear is also timed alone under
both GEMMs, and the rest of the step is compared with each form's own first Linear taken out.

One training step of the whole M4 model (forward, summed BCE over the genes, backward) on one bag of 5,000 instances at
the official sizes (2048-d input, 5 experts, 512 hidden, 10 genes), dropout on as in training. Also timed: the experts'
first Linear alone (fused 2048 -> 5 x 512, forward + weight gradient), the largest product of the step.

So that a busy machine cannot pass for a fast form: the load average and core count are printed before and after; the
forms are interleaved (the order alternates every repeat) and each repeat gives one ratio of a pair run back to back;
the median and the spread (min-max) of those ratios are reported. Both forms must give the same outputs (probabilities
and per-gene attention, eval mode). Goal: default >= 1.3x one-after-another at 2 threads and >= 1.0x at 1 thread.
Usage: python bench/m4_experts.py [--instances 5000] [--repeats 7] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from common.bench import load, spread
from methods.m4 import kernels
from methods.m4.model import M4, m4, transfer_experts
from methods.m4.train import bce_loss

GOALS = {1: 1.0, 2: 1.3}  # threads -> goal of the median ratio one-after-another / default


def step_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.perf_counter()
    bce_loss()(model, (x, y))[0].backward()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def fc_seconds(linear, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> float:
    """The fused first Linear of all experts, forward + weight/bias gradient."""
    w, b = weight.detach().requires_grad_(), bias.detach().requires_grad_()
    start = time.perf_counter()
    linear(x, w, b).sum().backward()
    return time.perf_counter() - start


def compare(default: M4, sequential: M4, x: torch.Tensor, y: torch.Tensor, repeats: int) -> list[float]:
    """Interleaved steps at the current thread count; prints times and ratios, returns the per-pair step ratios."""
    step_seconds(default, x, y), step_seconds(sequential, x, y)  # warm-up (first-call allocations, oneDNN primitives)
    t_d, t_s, fc_native, fc_chosen = [], [], [], []
    fc = default.experts.fc
    for r in range(repeats):
        pair = [(t_d, default), (t_s, sequential)]
        for times, model in pair if r % 2 == 0 else pair[::-1]:  # alternate the order: neither always runs first
            times.append(step_seconds(model, x, y))
        fc_native.append(fc_seconds(F.linear, x, fc.weight, fc.bias))
        fc_chosen.append(fc_seconds(kernels.linear, x, fc.weight, fc.bias))
    ratios = [s / d for s, d in zip(t_s, t_d, strict=True)]
    rest = [(s - n) / max(d - c, 1e-9) for s, d, n, c in zip(t_s, t_d, fc_native, fc_chosen, strict=True)]
    print(f"  one after another: {spread(t_s, ' s', 3)}")
    print(f"  default (batched): {spread(t_d, ' s', 3)}")
    print(f"  experts' first Linear alone, PyTorch's BLAS: {spread(fc_native, ' s', 3)}")
    print(f"  experts' first Linear alone, chosen GEMM ({kernels.chosen()}): {spread(fc_chosen, ' s', 3)}")
    print(f"  beyond the first Linear, one-after-another / default: {spread(rest)}")
    goal = GOALS.get(torch.get_num_threads())
    verdict = "" if goal is None else f"  goal >= {goal}x: {'met' if statistics.median(ratios) >= goal else 'NOT met'}"
    print(f"  step ratio one-after-another / default: {spread(ratios)}{verdict}")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch intra-op thread counts to run")
    args = parser.parse_args()
    print(f"before: {load()}; torch {torch.__version__}")
    torch.manual_seed(0)
    default = m4(feat_input=2048, tasks=10, num_expert=5, hidden=512)
    sequential = transfer_experts(default, batched=False)
    assert default.batched and not sequential.batched
    x = torch.randn(args.instances, 2048)
    y = torch.randint(0, 2, (10,)).float()

    default.eval(), sequential.eval()  # no dropout, so the outputs are comparable
    with torch.no_grad():
        (p_d, a_d), (p_s, a_s) = default(x, return_attention=True), sequential(x, return_attention=True)
    diff_p, diff_a = (p_d - p_s).abs().max().item(), (a_d - a_s).abs().max().item()
    same = diff_p < 1e-5 and diff_a < 1e-5
    print(f"max |diff| probabilities {diff_p:.2e}, attention {diff_a:.2e}: {'same' if same else 'DIFFERENT'}")

    default.train(), sequential.train()
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(
            f"M4 training step (forward + BCE + backward), bag of {args.instances} x 2048, 5 experts x 512, 10 genes; "
            f"{threads} thread(s); {args.repeats} interleaved pairs"
        )
        compare(default, sequential, x, y, args.repeats)
    print(f"after: {load()}")


if __name__ == "__main__":
    main()

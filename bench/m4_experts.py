"""M4's experts in one batched pass against one after another (the official code's form).

Forward + backward of the whole M4 model on one 5,000-instance bag at the official sizes (2048-d input, 5 experts,
512 hidden, 10 tasks), the same weights in both forms (transferred). Prints the max output difference and the speed
ratio (goal >= 1.5x). Usage: python bench/m4_experts.py [--instances 5000] [--repeats 5]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from methods.m4.model import build_model, transfer_experts  # noqa: E402


def step_seconds(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    batched = build_model("m4", feat_input=2048, tasks=10, num_expert=5, hidden=512, batched=True).eval()
    sequential = transfer_experts(batched, batched=False).eval()  # eval: no dropout, so outputs are comparable
    x = torch.randn(args.instances, 2048)
    with torch.no_grad():
        diff = (batched(x) - sequential(x)).abs().max().item()
    step_seconds(batched, x), step_seconds(sequential, x)  # warm-up
    t_b, t_s = [], []
    for _ in range(args.repeats):  # interleaved, best of N: the machine is noisy
        t_b.append(step_seconds(batched, x))
        t_s.append(step_seconds(sequential, x))
    print(f"bag of {args.instances} instances, forward + backward, best of {args.repeats}")
    print(f"one after another: {min(t_s):.3f} s   batched: {min(t_b):.3f} s")
    print(f"speedup batched / one-after-another = {min(t_s) / min(t_b):.2f}x  (goal >= 1.5x); max |output diff| = {diff:.2e}")


if __name__ == "__main__":
    main()

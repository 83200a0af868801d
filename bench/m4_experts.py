"""M4's experts in one batched pass (`BatchedMPExperts`) against one after another (`SequentialMPExperts`, the official
code's form), same weights (moved over with `transfer_experts`), same run.

One training step of the whole M4 model (forward, summed BCE over the genes, backward) on one bag of 5,000 instances at
the official sizes (2048-d input, 5 experts, 512 hidden, 10 genes), dropout on as in training. Both forms are timed in
turn, best of N (the machine is noisy). Also timed: the experts' first Linear alone (fused 2048 -> 5 x 512, forward +
weight gradient), which both forms must do and which therefore bounds the possible speedup.

Checks that both forms give the same outputs (probabilities and per-gene attention, eval mode) and prints the speedup
(goal >= 1.5x). Usage: python bench/m4_experts.py [--instances 5000] [--repeats 4] [--threads 0]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from methods.m4.model import m4, transfer_experts


def step_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.perf_counter()
    F.binary_cross_entropy(model(x), y, reduction="sum").backward()  # the loss of methods.m4.train.bce_loss
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def fc_floor_seconds(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> float:
    """The fused first Linear of all experts, forward + weight/bias gradient: work common to both forms."""
    w, b = weight.detach().requires_grad_(), bias.detach().requires_grad_()
    start = time.perf_counter()
    F.linear(x, w, b).sum().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batched = m4(feat_input=2048, tasks=10, num_expert=5, hidden=512, batched=True)
    sequential = transfer_experts(batched, batched=False)
    assert batched.batched and not sequential.batched
    x = torch.randn(args.instances, 2048)
    y = torch.randint(0, 2, (10,)).float()

    batched.eval(), sequential.eval()  # no dropout, so the outputs are comparable
    with torch.no_grad():
        (p_b, a_b), (p_s, a_s) = batched(x, return_attention=True), sequential(x, return_attention=True)
    diff_p, diff_a = (p_b - p_s).abs().max().item(), (a_b - a_s).abs().max().item()
    same = diff_p < 1e-5 and diff_a < 1e-5

    batched.train(), sequential.train()
    step_seconds(batched, x, y), step_seconds(sequential, x, y)  # warm-up (first-call allocations, oneDNN primitives)
    t_b, t_s, t_fc = [], [], []
    for _ in range(args.repeats):  # interleaved, best of N: the machine is noisy
        t_b.append(step_seconds(batched, x, y))
        t_s.append(step_seconds(sequential, x, y))
        t_fc.append(fc_floor_seconds(x, batched.experts.fc.weight, batched.experts.fc.bias))
    b, s, fc = min(t_b), min(t_s), min(t_fc)
    print(
        f"M4 training step (forward + BCE + backward), bag of {args.instances} x 2048, 5 experts x 512, 10 genes; "
        f"{torch.get_num_threads()} threads; best of {args.repeats}"
    )
    print(f"  one after another: {s:.3f} s   batched: {b:.3f} s")
    print(
        f"  experts' first Linear alone (both forms must do it): {fc:.3f} s -> the rest: "
        f"{s - fc:.3f} s one after another, {b - fc:.3f} s batched ({(s - fc) / max(b - fc, 1e-9):.2f}x)"
    )
    print(f"  max |diff| probabilities {diff_p:.2e}, attention {diff_a:.2e}: {'same' if same else 'DIFFERENT'}")
    print(f"speedup batched / one-after-another = {s / b:.2f}x  (goal >= 1.5x)")


if __name__ == "__main__":
    main()

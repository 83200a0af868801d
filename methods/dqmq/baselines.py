"""The baselines' training losses: full precision and fixed WbAb LSQ (the task loss alone), and static mixed precision
in the manner of EdMIPS (Cai & Vasconcelos, CVPR 2020), which ignores the input's quality.

Static: per-layer logits (EdMIPS's alphas) over the candidate bits of weights and of activations; during the search
every layer runs at the softmax-weighted mix of its quantized candidates and the objective adds a penalty on expected
BitOps above the budget. Then the configuration is made discrete (argmax, fitted to the budget: `fit_to_budget`) and
the network is fine-tuned at it for the remaining steps (EdMIPS retrains from scratch; we fine-tune in the same run).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods.dqmq.quant import bitops


def task_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy at the model's own bits (fp: none; fixed: WbAb)."""
    return F.cross_entropy(model(batch["x"]), batch["y"]), {}


def config_bitops(idx: torch.Tensor, macs: torch.Tensor, candidates: torch.Tensor) -> float:
    bits = candidates[idx].float()
    return float(bitops(macs, bits[:, 0], bits[:, 1]))


def fit_to_budget(logits: torch.Tensor, macs: torch.Tensor, candidates: torch.Tensor, budget: float) -> torch.Tensor:
    """Candidate indices [L, 2] from per-layer logits [L, 2, K] (candidates ascending) that spend at most `budget`
    BitOps per sample and as much of it as they can: from the argmax, lower one choice at a time where it costs the
    least logit per BitOps saved until within budget, then raise one at a time where it gains the most logit per
    BitOps spent while the budget allows."""
    idx = logits.argmax(-1)

    def moves(step: int) -> list[tuple[float, torch.Tensor]]:
        out = []
        now = config_bitops(idx, macs, candidates)
        for layer, j in ((layer, j) for layer in range(len(idx)) for j in range(2)):
            k = int(idx[layer, j]) + step
            if not 0 <= k < len(candidates):
                continue
            new = idx.clone()
            new[layer, j] = k
            spent = config_bitops(new, macs, candidates) - now  # < 0 when lowering
            gain = float(logits[layer, j, k] - logits[layer, j, idx[layer, j]])
            if step < 0 or now + spent <= budget:
                out.append((gain / abs(spent) if spent else float("inf"), new))
        return out

    while config_bitops(idx, macs, candidates) > budget and (lower := moves(-1)):
        idx = max(lower, key=lambda m: m[0])[1]
    while raise_ := moves(+1):
        idx = max(raise_, key=lambda m: m[0])[1]
    return idx


def static_loss(s, total_calls: int, budget: float):
    """EdMIPS search then fine-tuning (settings `s`: the `static` section; `budget`: BitOps per sample)."""

    def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = batch["x"], batch["y"]
        progress = model.calls.item() / total_calls
        model.calls += 1
        if progress < s.search_fraction:
            probs = model.arch_logits.softmax(-1)
            ce = F.cross_entropy(model.forward_soft(x, probs[:, 0], probs[:, 1]), y)
            bits = probs @ model.candidates.float()
            expected = bitops(model.macs, bits[:, 0], bits[:, 1])
            over = F.relu(expected / budget - 1)
            return ce + s.lam * over, {"ce": ce.item(), "bitops_vs_budget": (expected / budget).item()}
        if not bool(model.searched):
            with torch.no_grad():
                model.choice.copy_(fit_to_budget(model.arch_logits, model.macs, model.candidates, budget))
                model.searched.fill_(True)
        return task_loss(model, batch)

    return loss

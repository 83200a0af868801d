"""Unlearning objectives: MEOW, its variants, and the TOFU baselines, as the official MEOW trainer computes them.

A batch is a dict of padded sub-batches: `forget` (forget question + true answer), `retain`, `idk` (forget question +
a refusal), `inverted` (forget question + a MEMO-selected inverted fact). Conventions of the reference code kept here:
  * NLL is the token mean over the sub-batch (what `model(..., labels).loss` returns);
  * NPO/DPO use the per-sequence *summed* NLL (`get_batch_loss`) and scale by 2/beta;
  * KL is `kl_div(log p_cur, log p_ref, batchmean)` over the flattened (batch × position) rows, padding included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.lm import sequence_nll
from common.registry import register
from methods.meow.config import LossConfig


def mean_nll(model, batch) -> torch.Tensor:
    nll, count, _ = sequence_nll(model, batch)
    return nll.sum() / count.sum().clamp(min=1)


def summed_nll(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence summed NLL and the logits it came from."""
    nll, _, logits = sequence_nll(model, batch)
    return nll, logits


def kl_to_reference(model, ref, batch) -> torch.Tensor:
    """KL(ref ‖ current) per position, averaged over all batch × position rows, as TOFU's `grad_ascent_KL`."""
    with torch.no_grad():
        ref_logp = F.log_softmax(
            ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float(), -1
        )
    cur_logp = F.log_softmax(
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float(), -1
    )
    vocab = cur_logp.shape[-1]
    return F.kl_div(cur_logp.view(-1, vocab), ref_logp.view(-1, vocab), reduction="batchmean", log_target=True)


def npo_term(model, ref, forget, beta: float) -> torch.Tensor:
    """-(2/β)·mean log σ(β·(L_cur − L_ref)) with L the summed NLL of the forget answer."""
    cur, _ = summed_nll(model, forget)
    with torch.no_grad():
        old, _ = summed_nll(ref, forget)
    return -F.logsigmoid(beta * (cur - old)).mean() * 2 / beta


def dpo_term(model, ref, win, lose, beta: float) -> torch.Tensor:
    """-(2/β)·mean log σ(β·((log π_w − log π_l) − (log π_ref,w − log π_ref,l))), log π = −summed NLL."""
    cur_w, _ = summed_nll(model, win)
    cur_l, _ = summed_nll(model, lose)
    with torch.no_grad():
        ref_w, _ = summed_nll(ref, win)
        ref_l, _ = summed_nll(ref, lose)
    logits = (ref_w - ref_l) - (cur_w - cur_l)  # = (−cur_w + cur_l) − (−ref_w + ref_l)
    return -F.logsigmoid(beta * logits).mean() * 2 / beta


# Each loss: (model, reference model or None, batch, settings) -> scalar.
LossFn = Callable[[torch.nn.Module, torch.nn.Module | None, dict, LossConfig], torch.Tensor]


@dataclass(frozen=True)
class Loss:
    """A registered objective (kind "meow.loss"), with what training it needs."""

    fn: LossFn
    needs: tuple[str, ...]  # the sub-batches it reads; the dataset builds only these
    reference: bool = False  # reads a frozen copy of the starting model

    def __call__(self, model, ref, batch: dict, s: LossConfig) -> torch.Tensor:
        return self.fn(model, ref, batch, s)


def loss(name: str, *needs: str, reference: bool = False) -> Callable[[LossFn], LossFn]:
    def add(fn: LossFn) -> LossFn:
        register("meow.loss", name)(Loss(fn, needs, reference))
        return fn

    return add


@loss("ga", "forget")
def ga(model, ref, b, s):
    return -mean_nll(model, b["forget"])


@loss("gd", "forget", "retain")
def gd(model, ref, b, s):
    return -mean_nll(model, b["forget"]) + mean_nll(model, b["retain"])


@loss("kl", "forget", "retain", reference=True)
def kl(model, ref, b, s):
    return -mean_nll(model, b["forget"]) + kl_to_reference(model, ref, b["retain"])


@loss("idk", "idk", "retain")
def idk(model, ref, b, s):
    # One token mean over refusals and retain answers together, as the reference concatenates the two batches.
    n1, c1, _ = sequence_nll(model, b["idk"])
    n2, c2, _ = sequence_nll(model, b["retain"])
    return (n1.sum() + n2.sum()) / (c1.sum() + c2.sum()).clamp(min=1)


@loss("dpo", "idk", "forget", reference=True)
def dpo(model, ref, b, s):
    return dpo_term(model, ref, b["idk"], b["forget"], s.beta)


@loss("npo", "forget", reference=True)
def npo(model, ref, b, s):
    return npo_term(model, ref, b["forget"], s.beta)


@loss("npo+gd", "forget", "retain", reference=True)
def npo_gd(model, ref, b, s):
    return s.npo_coeff * npo_term(model, ref, b["forget"], s.beta) + s.grad_diff_coeff * mean_nll(model, b["retain"])


@loss("npo+kl", "forget", "retain", reference=True)
def npo_kl(model, ref, b, s):
    return s.npo_coeff * npo_term(model, ref, b["forget"], s.beta) + s.kl_coeff * kl_to_reference(
        model, ref, b["retain"]
    )


@loss("meow", "inverted")
def meow(model, ref, b, s):
    return mean_nll(model, b["inverted"])


@loss("meow+gd", "inverted", "retain")
def meow_gd(model, ref, b, s):
    return 0.9 * mean_nll(model, b["inverted"]) + 0.1 * mean_nll(model, b["retain"])


@loss("meow+kl", "inverted", reference=True)
def meow_kl(model, ref, b, s):
    # The reference anchors the inverted-fact inputs themselves to the original model.
    return mean_nll(model, b["inverted"]) + kl_to_reference(model, ref, b["inverted"])


@loss("meow+dpo", "retain", "inverted", reference=True)
def meow_dpo(model, ref, b, s):
    return dpo_term(model, ref, b["retain"], b["inverted"], s.beta)

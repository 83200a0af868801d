"""Each unlearning loss on a tiny batch against its formula, computed independently of methods.meow.losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from common.lm import Encoded, collate
from common.registry import get, names
from methods.meow import losses  # noqa: F401 - registers the "meow.loss" objectives
from methods.meow.config import LossConfig

V = 50


def tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=32,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


def sub_batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    items = []
    for n_prompt, n_answer in ((3, 4), (2, 2)):
        ids = torch.randint(1, V, (n_prompt + n_answer,), generator=g).tolist()
        items.append(Encoded(ids, [-100] * n_prompt + ids[n_prompt:]))
    return collate(items, pad_id=0)


@pytest.fixture(scope="module")
def setup():
    model, ref = tiny_llama(0), tiny_llama(1)
    batch = {k: sub_batch(i) for i, k in enumerate(("forget", "retain", "idk", "inverted"))}
    return model, ref, batch


def hf_nll(model, b):
    """Token-mean NLL as transformers computes it."""
    return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss


def logp_sum(model, b):
    """Per-sequence summed log-probability of the labelled tokens, by explicit gathering."""
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    logp = torch.log_softmax(logits.float(), -1)
    out = []
    for i in range(b["input_ids"].shape[0]):
        total = 0.0
        for t in range(1, b["input_ids"].shape[1]):
            if b["labels"][i, t] != -100:
                total = total + logp[i, t - 1, b["labels"][i, t]]
        out.append(total)
    return torch.stack(out)


def kl_ref_cur(model, ref, b):
    """Σ_positions Σ_v p_ref (log p_ref − log p_cur) / (batch × positions)."""
    lc = torch.log_softmax(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, -1)
    lr = torch.log_softmax(ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, -1)
    return (lr.exp() * (lr - lc)).sum() / (lc.shape[0] * lc.shape[1])


def npo(model, ref, b, beta):
    return (-F.logsigmoid(beta * (-logp_sum(model, b) + logp_sum(ref, b)))).mean() * 2 / beta


def dpo(model, ref, win, lose, beta):
    margin = (logp_sum(model, win) - logp_sum(model, lose)) - (logp_sum(ref, win) - logp_sum(ref, lose))
    return (-F.logsigmoid(beta * margin)).mean() * 2 / beta


S = LossConfig(beta=0.5, npo_coeff=0.7, grad_diff_coeff=0.3, kl_coeff=2.0)


def expected(name, model, ref, b):
    f, r, i, inv = b["forget"], b["retain"], b["idk"], b["inverted"]
    both = {
        k: torch.cat(
            [
                F.pad(i[k], (0, max(0, r[k].shape[1] - i[k].shape[1])), value=-100 if k == "labels" else 0),
                F.pad(r[k], (0, max(0, i[k].shape[1] - r[k].shape[1])), value=-100 if k == "labels" else 0),
            ]
        )
        for k in i
    }
    return {
        "ga": lambda: -hf_nll(model, f),
        "gd": lambda: -hf_nll(model, f) + hf_nll(model, r),
        "kl": lambda: -hf_nll(model, f) + kl_ref_cur(model, ref, r),
        "idk": lambda: hf_nll(model, both),
        "dpo": lambda: dpo(model, ref, i, f, S.beta),
        "npo": lambda: npo(model, ref, f, S.beta),
        "npo+gd": lambda: 0.7 * npo(model, ref, f, S.beta) + 0.3 * hf_nll(model, r),
        "npo+kl": lambda: 0.7 * npo(model, ref, f, S.beta) + 2.0 * kl_ref_cur(model, ref, r),
        "meow": lambda: hf_nll(model, inv),
        "meow+gd": lambda: 0.9 * hf_nll(model, inv) + 0.1 * hf_nll(model, r),
        "meow+kl": lambda: hf_nll(model, inv) + kl_ref_cur(model, ref, inv),
        "meow+dpo": lambda: dpo(model, ref, r, inv, S.beta),
    }[name]()


@pytest.mark.parametrize("name", names("meow.loss"))
def test_loss_matches_formula(setup, name):
    model, ref, batch = setup
    got = get("meow.loss", name)(model, ref, batch, S)
    with torch.no_grad():
        want = expected(name, model, ref, batch)
    assert got.item() == pytest.approx(want.item(), rel=1e-4, abs=1e-5)
    got.backward()  # every loss must give the trained model a gradient
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    model.zero_grad()
    assert all(p.grad is None for p in ref.parameters())


def test_npo_and_dpo_are_2_log2_over_beta_when_model_is_the_reference(setup):
    model, _, batch = setup
    # With π = π_ref the NPO and DPO terms are exactly (2/β)·log 2, whatever the data.
    assert get("meow.loss", "npo")(model, model, batch, S).item() == pytest.approx(
        2 / S.beta * torch.log(torch.tensor(2.0)).item(), rel=1e-5
    )
    assert get("meow.loss", "dpo")(model, model, batch, S).item() == pytest.approx(
        2 / S.beta * torch.log(torch.tensor(2.0)).item(), rel=1e-5
    )

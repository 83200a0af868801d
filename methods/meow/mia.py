"""Robustness after unlearning: membership inference of the forget split, and extraction of its answers.

Membership inference as open-unlearning runs it on TOFU: every row of the forget split (members of the fine-tuning
data) and of the holdout split (same kind of authors, never trained on) gets a score from its answer tokens given the
question, each larger for a non-member:
  * loss    = mean NLL of the answer tokens;
  * zlib    = loss / len(zlib.compress(answer text)) (the text's own compressibility as the reference);
  * min_k   = −mean of the lowest k·n token log-probabilities (k = mia.k, n answer tokens, at least one token);
  * min_k++ = the same over z = (log p(token) − μ) / σ, μ and σ² the mean and variance of log p over the vocabulary
              under the model's own next-token distribution.
AUC per attack = roc_auc_score with the forget rows labelled 0 and the holdout rows 1: 1 when the forget set looks
far more familiar than the holdout, 0.5 when the two cannot be told apart (the retain model's expected value).
privleak (open-unlearning's, in %) = ((1 − AUC) − (1 − AUC_retain)) / (1 − AUC_retain) × 100: 0 for a model as
private as the retain model, −100 for a model that gives its members away completely.

Extraction: the forget questions cut to their first mia.prefix_fraction of words, asked in the model's prompt
template; the greedy answer's ROUGE-L recall (stemmed) of the true answer, averaged: how much of the forgotten answers
still comes back from a partial question.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch
from rouge_score import rouge_scorer
from sklearn.metrics import roc_auc_score

from common.dist import shard_map
from common.lm import IGNORE, collate, encode_qa, generate_answers

ATTACKS = ("loss", "zlib", "min_k", "min_k++")


def min_k(values: np.ndarray, k: float) -> float:
    """−mean of the lowest max(1, int(k·n)) values (token log-probabilities, or their z-scores for min_k++)."""
    n = max(1, int(len(values) * k))
    return float(-np.sort(values)[:n].mean())


def row_scores(token_logp: np.ndarray, mu: np.ndarray, var: np.ndarray, text: str, k: float) -> dict[str, float]:
    """Every attack's score of one row from its answer tokens' log-probabilities and the vocabulary's μ, σ²."""
    loss = float(-token_logp.mean())
    z = (token_logp - mu) / np.sqrt(np.maximum(var, 1e-6))
    return {
        "loss": loss,
        "zlib": loss / len(zlib.compress(text.encode("utf-8"))),
        "min_k": min_k(token_logp, k),
        "min_k++": min_k(z, k),
    }


@torch.no_grad()
def attack_scores(
    model, tokenizer, qa: Sequence[tuple[str, str]], *, family: str, max_length: int, k: float, batch_size: int
) -> list[dict[str, float]]:
    """Every attack's score of each (question, answer) row, batched (right padding, similar lengths together)."""
    device = next(model.parameters()).device
    encoded = [encode_qa(tokenizer, family, q, a, max_length) for q, a in qa]
    order = sorted(range(len(qa)), key=lambda i: len(encoded[i].input_ids))
    out: list[dict[str, float]] = [{} for _ in qa]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate([encoded[i] for i in chunk], tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        logp = torch.log_softmax(logits.logits[:, :-1].float(), -1)
        labels = batch["labels"][:, 1:].to(device)
        for row, i in enumerate(chunk):
            pos = (labels[row] != IGNORE).nonzero().squeeze(-1)
            lp = logp[row, pos]  # (answer tokens, vocab)
            targets = labels[row, pos]
            p = lp.exp()
            mu = (p * lp).sum(-1)
            var = (p * lp.square()).sum(-1) - mu.square()
            text = tokenizer.decode(targets.tolist(), skip_special_tokens=True)
            tok = lp.gather(-1, targets[:, None]).squeeze(-1)
            out[i] = row_scores(*(t.cpu().numpy() for t in (tok, mu, var)), text, k)
    return out


def auc(forget: Sequence[float], holdout: Sequence[float]) -> float:
    """open-unlearning's convention: forget rows labelled 0, holdout rows 1, scores larger for non-members."""
    labels = [0] * len(forget) + [1] * len(holdout)
    return float(roc_auc_score(labels, [*forget, *holdout]))


def privleak(auc_model: float, auc_retain: float) -> float:
    """open-unlearning's privleak (%), from the AUCs of the evaluated and the retain model."""
    return ((1 - auc_model) - (1 - auc_retain)) / (1 - auc_retain + 1e-10) * 100


def question_prefix(question: str, fraction: float) -> str:
    words = question.split()
    return " ".join(words[: max(1, round(len(words) * fraction))])


_ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def evaluate(
    model, tokenizer, forget: Sequence[dict], holdout: Sequence[dict], cfg, *, family: str, max_length: int
) -> dict[str, float]:
    """`mia/<attack>_auc` for every attack, and `extraction/rougeL_recall`; rows split across processes."""
    qa = [(r["question"], r["answer"]) for r in [*forget, *holdout]]
    scores = shard_map(
        lambda part: attack_scores(
            model, tokenizer, part, family=family, max_length=max_length, k=cfg.k, batch_size=cfg.batch_size
        ),
        qa,
    )
    out = {}
    for attack in cfg.attacks:
        values = [s[attack] for s in scores]
        out[f"mia/{attack}_auc"] = auc(values[: len(forget)], values[len(forget) :])
    prompts = [question_prefix(r["question"], cfg.prefix_fraction) for r in forget]
    answers = shard_map(
        lambda qs: generate_answers(model, tokenizer, family, qs, cfg.max_new_tokens, cfg.batch_size), prompts
    )
    recall = [_ROUGE.score(r["answer"], a)["rougeL"].recall for r, a in zip(forget, answers, strict=True)]
    out["extraction/rougeL_recall"] = float(np.mean(recall))
    return out

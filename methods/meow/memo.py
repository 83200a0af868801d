"""MEMO: how strongly a model has memorised a (question, answer) text, and MEOW's selection of inverted facts by it.

As in the official code: the answer (suffix mode) or the question (prefix mode) is cut at every 5th character; the
model continues each cut greedily from raw text (no chat template) for up to 200 new tokens; the continuation is
scored against the rest of the text with ROUGE-1 precision (stemmed, rouge-score); MEMO is the mean over the cuts.

One deliberate difference: the official code decodes the whole sequence and string-replaces the prompt away, which
leaves `<s>`/`</s>` in the text (ROUGE then counts an 's' token). We decode only the new tokens, without special
tokens, so the score measures the continuation alone.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from rouge_score import rouge_scorer

from common.lm import generate_greedy
from methods.meow.config import MemoConfig

SUFFIX = "_rouge1"


def windows(question: str, answer: str, mode: str, stride: int) -> list[tuple[str, str]]:
    """(prompt, reference continuation) for every cut; cuts are character positions 1, 1+stride, ..."""
    if mode == "suffix":
        return [(question + " " + answer[:k], answer[k:]) for k in range(1, len(answer), stride)]
    if mode == "prefix":
        return [(question[:k], question[k:] + " " + answer) for k in range(1, len(question), stride)]
    raise ValueError(f"MEMO mode must be suffix or prefix, got '{mode}'")


_SCORER = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)


def rouge1_precision(reference: str, generated: str) -> float:
    return _SCORER.score(reference, generated)["rouge1"].precision


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def memo_simple(model, tokenizer, question: str, answer: str, cfg: MemoConfig) -> float:
    """The straightforward form: one generate call per window. The reference the batched form is checked against."""
    scores = []
    for prompt, label in windows(question, answer, cfg.mode, cfg.stride):
        (out,) = generate_greedy(model, tokenizer, [prompt], cfg.max_new_tokens, batch_size=1)
        scores.append(rouge1_precision(label, out))
    return _mean(scores)


def memo_batched(model, tokenizer, pairs: Sequence[tuple[str, str]], cfg: MemoConfig) -> list[float]:
    """MEMO of many (question, answer) pairs: every window of every pair goes through one batched greedy decoder.

    Windows of all pairs are pooled and grouped by prompt length, so batches stay full and padding stays small; each
    sequence decodes incrementally with its KV cache.
    """
    spans, prompts, labels = [], [], []
    for q, a in pairs:
        ws = windows(q, a, cfg.mode, cfg.stride)
        spans.append((len(prompts), len(prompts) + len(ws)))
        prompts += [p for p, _ in ws]
        labels += [lab for _, lab in ws]
    outs = generate_greedy(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size)
    scores = [rouge1_precision(lab, out) for lab, out in zip(labels, outs, strict=True)]
    return [_mean(scores[s:e]) for s, e in spans]


def answer_keys(row: dict) -> list[str]:
    """The text keys MEMO scores in a MEOW-layout row: the true answer and every inverted one, in index order."""
    inverted = sorted((k for k in row if k.startswith("answer_") and k[7:].isdigit()), key=lambda k: int(k[7:]))
    return (["undesired_answer"] if "undesired_answer" in row else []) + inverted


def score_rows(model, tokenizer, rows: list[dict], cfg: MemoConfig) -> list[dict]:
    """Copies of the rows with `<key>_rouge1` = MEMO for every answer key (the MEOW release's layout)."""
    pairs, where = [], []
    for i, row in enumerate(rows):
        for key in answer_keys(row):
            pairs.append((row["question"], row[key]))
            where.append((i, key))
    scores = memo_batched(model, tokenizer, pairs, cfg)
    out = [dict(r) for r in rows]
    for (i, key), s in zip(where, scores, strict=True):
        out[i][key + SUFFIX] = s
    return out


def select_top_k(row: dict, k: int, order: str, rng: random.Random) -> list[str]:
    """Keys of the k inverted answers MEOW trains on, by MEMO: largest, smallest, or a seeded random choice.

    Ties are broken by answer index, and each key appears once (the official code maps scores back to keys by value,
    so equal scores can select one answer twice).
    """
    keys = [k_ for k_ in answer_keys(row) if k_ != "undesired_answer"]
    if order == "random":
        return rng.sample(keys, min(k, len(keys)))
    missing = [k_ for k_ in keys if k_ + SUFFIX not in row]
    if missing:
        raise KeyError(f"no MEMO score for {missing[0]} (run the memo command first)")
    if order not in ("largest", "smallest"):
        raise ValueError(f"selection order must be largest, smallest or random, got '{order}'")
    sign = -1.0 if order == "largest" else 1.0
    ranked = sorted(keys, key=lambda k_: (sign * row[k_ + SUFFIX], int(k_[7:])))
    return ranked[:k]

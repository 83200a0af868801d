"""MEMO: how strongly a model has memorised a (question, answer) text, and MEOW's selection of inverted facts by it.

As in the official code: the answer (suffix mode) or the question (prefix mode) is cut at every 5th character; the
model continues each cut greedily from raw text (no chat template) for up to 200 new tokens; the continuation is
scored against the rest of the text with ROUGE-1 precision (stemmed, rouge-score); MEMO is the mean over the cuts.

Decoding (`memo.decode`): the official code decodes prompt and continuation together with special tokens kept and
deletes the prompt string, which leaves `<s>`/`</s>` in the scored text (ROUGE reads `<s>` as a word 's', which usually
lowers scores); the MEOW release's files were made that way (`official`). By default we decode only the new tokens,
without special tokens, so the score measures the continuation alone (`new_tokens`). Both decode the same greedy
tokens. (The official code also leaves sampling to the model's generation_config; both modes here are greedy.)
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from rouge_score import rouge_scorer

from common.dist import shard_map
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


@torch.no_grad()
def official_decode(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy continuations decoded as the MEOW code does: `decode(prompt + continuation).replace(prompt, '')`.

    Batched with left padding; each continuation is cut after its first EOS, where the official one-at-a-time loop
    stops (a batch pads finished rows on).
    """
    device = next(model.parameters()).device
    encoded = tokenizer(list(prompts))["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, padding_side="left", return_tensors="pt")
        gen = model.generate(
            **batch.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        for row, i in enumerate(chunk):
            new = gen[row, batch["input_ids"].shape[1] :].tolist()
            if tokenizer.eos_token_id in new:
                new = new[: new.index(tokenizer.eos_token_id) + 1]
            out[i] = tokenizer.decode(encoded[i] + new).replace(prompts[i], "")
    return out


def continuations(model, tokenizer, prompts: Sequence[str], cfg: MemoConfig, batch_size: int) -> list[str]:
    """Greedy continuations of raw-text prompts, decoded as `cfg.decode` says."""
    if cfg.decode == "official":
        return official_decode(model, tokenizer, prompts, cfg.max_new_tokens, batch_size)
    return generate_greedy(model, tokenizer, prompts, cfg.max_new_tokens, batch_size)


def memo_simple(model, tokenizer, question: str, answer: str, cfg: MemoConfig) -> float:
    """The straightforward form: one generate call per window. The reference the batched form is checked against."""
    scores = []
    for prompt, label in windows(question, answer, cfg.mode, cfg.stride):
        (out,) = continuations(model, tokenizer, [prompt], cfg, batch_size=1)
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
    # Under torchrun each process decodes its share of the windows; all get every continuation back.
    outs = shard_map(lambda part: continuations(model, tokenizer, part, cfg, cfg.batch_size), prompts)
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
    """Keys of the k inverted answers MEOW trains on, by MEMO: largest, smallest, a seeded random choice, or the
    official code's random choice.

    Ties are broken by answer index, and each key appears once (the official code maps scores back to keys by value,
    so equal scores can select one answer twice; `random_official` keeps that).
    """
    keys = [k_ for k_ in answer_keys(row) if k_ != "undesired_answer"]
    if order == "random":
        return rng.sample(keys, min(k, len(keys)))
    missing = [k_ for k_ in keys if k_ + SUFFIX not in row]
    if missing:
        raise KeyError(f"no MEMO score for {missing[0]}")
    if order == "random_official":
        return official_random(row, k)
    if order not in ("largest", "smallest"):
        raise ValueError(f"selection order must be largest, smallest, random or random_official, got '{order}'")
    sign = -1.0 if order == "largest" else 1.0
    ranked = sorted(keys, key=lambda k_: (sign * row[k_ + SUFFIX], int(k_[7:])))
    return ranked[:k]


def official_random(row: dict, k: int) -> list[str]:
    """The MEOW code's `random` order: the generator reseeded with 42 for every question, k scores sampled from the
    answers' scores in the row's key order (padded with answer_0's when fewer), each mapped back to the first answer
    holding that score."""
    scored = [key for key in row if key.startswith("answer") and key.endswith(SUFFIX)]
    values = [row[key] for key in scored]
    values += [row["answer_0" + SUFFIX]] * (k - len(values))
    picked = random.Random(42).sample(values, k)
    return [next(key for key in scored if row[key] == v).removesuffix(SUFFIX) for v in picked]

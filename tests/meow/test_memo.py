"""MEMO windows, the batched form against the simple one, and top-k selection."""

from __future__ import annotations

import random

import pytest

from methods.meow.config import MemoConfig
from methods.meow.memo import memo_batched, memo_simple, rouge1_precision, score_rows, select_top_k, windows


def test_windows_cut_every_fifth_character():
    w = windows("Q?", "abcdefghijkl", "suffix", 5)
    assert w == [("Q? a", "bcdefghijkl"), ("Q? abcdef", "ghijkl"), ("Q? abcdefghijk", "l")]
    p = windows("Where is?", "There.", "prefix", 5)
    assert p == [("W", "here is? There."), ("Where ", "is? There.")]
    with pytest.raises(ValueError):
        windows("q", "a", "middle", 5)


def test_rouge1_precision_is_over_generated_unigrams():
    # 2 of the 4 generated unigrams appear in the reference; stemming maps "cities" to "citi" like "city".
    assert rouge1_precision("born in the city", "born cities far away") == pytest.approx(0.5)


def test_batched_memo_equals_simple(finetuned):
    cfg, source, model, tok = finetuned
    rows = source.load("forget10_perturbed")[:3]
    pairs = [(r["question"], a) for r in rows for a in (r["answer"], r["perturbed_answer"][0])]
    s = MemoConfig(max_new_tokens=40, batch_size=16)
    batched = memo_batched(model, tok, pairs, s)
    simple = [memo_simple(model, tok, q, a, s) for q, a in pairs]
    assert batched == pytest.approx(simple, abs=0.01)
    # The model memorised the true answers far better than wrong ones.
    assert sum(batched[0::2]) / 3 > sum(batched[1::2]) / 3 + 0.1


def test_score_rows_writes_release_layout(finetuned):
    cfg, source, model, tok = finetuned
    row = {
        "question": "Where was Ada born?",
        "undesired_answer": "In Lisbon.",
        "answer_0": "In Oslo.",
        "answer_1": "In Riga.",
    }
    (out,) = score_rows(model, tok, [row], MemoConfig(max_new_tokens=10))
    assert set(out) == set(row) | {"undesired_answer_rouge1", "answer_0_rouge1", "answer_1_rouge1"}
    assert all(0.0 <= out[k] <= 1.0 for k in out if k.endswith("_rouge1"))


def test_selection_orders_and_ties():
    row = {
        "question": "q",
        **{f"answer_{i}": f"a{i}" for i in range(5)},
        "answer_0_rouge1": 0.5,
        "answer_1_rouge1": 0.9,
        "answer_2_rouge1": 0.5,
        "answer_3_rouge1": 0.5,
        "answer_4_rouge1": 0.1,
        "undesired_answer": "t",
        "undesired_answer_rouge1": 1.0,
    }
    rng = random.Random(0)
    assert select_top_k(row, 3, "largest", rng) == ["answer_1", "answer_0", "answer_2"]  # ties by index, no repeats
    assert select_top_k(row, 3, "smallest", rng) == ["answer_4", "answer_0", "answer_2"]
    tied = {**row, **{f"answer_{i}_rouge1": 0.5 for i in range(5)}}
    assert select_top_k(tied, 5, "largest", rng) == [f"answer_{i}" for i in range(5)]
    picks = select_top_k(row, 3, "random", random.Random(7))
    assert picks == select_top_k(row, 3, "random", random.Random(7)) and len(set(picks)) == 3
    assert "undesired_answer" not in picks
    assert len(select_top_k({"question": "q", "answer_0": "x", "answer_0_rouge1": 0.2}, 3, "largest", rng)) == 1

"""MEMO windows, both decodings, the batched form against the simple one, and top-k selection."""

from __future__ import annotations

import json
import random
import re

import pytest

from common.config import compose
from common.errors import UserError
from methods.meow import commands, pipeline
from methods.meow.config import MemoConfig
from methods.meow.memo import (
    continuations,
    memo_batched,
    memo_simple,
    rouge1_precision,
    score_rows,
    select_top_k,
    windows,
)
from tests.meow.conftest import SMALL


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


@pytest.mark.parametrize("decode", ["new_tokens", "official"])
def test_batched_memo_equals_simple(finetuned, decode):
    cfg, source, model, tok = finetuned
    rows = source.load("forget10_perturbed")[:3]
    pairs = [(r["question"], a) for r in rows for a in (r["answer"], r["perturbed_answer"][0])]
    s = MemoConfig(max_new_tokens=40, batch_size=16, decode=decode)
    batched = memo_batched(model, tok, pairs, s)
    simple = [memo_simple(model, tok, q, a, s) for q, a in pairs]
    assert batched == pytest.approx(simple, abs=0.01)
    # The model memorised the true answers far better than wrong ones (over 10 rows: 3 are too few to average).
    rows = source.load("forget10_perturbed")[:10]
    true = memo_batched(model, tok, [(r["question"], r["answer"]) for r in rows], s)
    wrong = memo_batched(model, tok, [(r["question"], r["perturbed_answer"][0]) for r in rows], s)
    assert sum(true) / 10 > sum(wrong) / 10 + 0.1, (true, wrong)


def test_the_two_decodings_differ_only_in_decoding(finetuned):
    """official = the MEOW code's decode(whole sequence, special tokens kept).replace(prompt, ''); new_tokens = the
    generated tokens alone without special tokens. Both from the same greedy tokens."""
    _, source, model, tok = finetuned
    row = source.load("forget10")[0]
    prompts = [p for p, _ in windows(row["question"], row["answer"], "suffix", 5)][:4]
    official = continuations(model, tok, prompts, MemoConfig(max_new_tokens=30, decode="official"), batch_size=1)
    ours = continuations(model, tok, prompts, MemoConfig(max_new_tokens=30), batch_size=1)
    for prompt, a, b in zip(prompts, official, ours, strict=True):
        ids = tok(prompt, return_tensors="pt").input_ids
        seq = model.generate(ids, max_new_tokens=30, do_sample=False, pad_token_id=tok.pad_token_id)[0]  # official
        assert a == tok.decode(seq).replace(prompt, "")
        assert b == tok.decode(seq[ids.shape[1] :], skip_special_tokens=True).strip()
        assert a != b and tok.bos_token in a  # the official text keeps <s> (and </s> where the answer ended)
    assert any(tok.eos_token in a for a in official)


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


def test_official_random_selection():
    """The MEOW code: random.seed(42) per question, then random.sample(k) of the scores in the row's key order
    (padded with answer_0's score), each mapped back to the first key with that score. Python's generator seeded
    with 42 samples positions [0, 3, 1] of 4 and [2, 0, 1] of 3."""
    row = {
        "question": "q",
        "undesired_answer": "t",
        **{f"answer_{i}": f"a{i}" for i in range(4)},
        "undesired_answer_rouge1": 0.9,
        **{f"answer_{i}_rouge1": 0.1 * (i + 1) for i in range(4)},
    }
    rng = random.Random(0)
    assert select_top_k(row, 3, "random_official", rng) == ["answer_0", "answer_3", "answer_1"]
    assert select_top_k(row, 3, "random_official", rng) == ["answer_0", "answer_3", "answer_1"]  # reseeded per row
    tied = {**row, "answer_3_rouge1": 0.1}  # a score equal to answer_0's selects answer_0 twice, as officially
    assert select_top_k(tied, 3, "random_official", rng) == ["answer_0", "answer_0", "answer_1"]
    two = {"question": "q", "answer_0": "x", "answer_1": "y", "answer_0_rouge1": 0.3, "answer_1_rouge1": 0.6}
    assert select_top_k(two, 3, "random_official", rng) == ["answer_0", "answer_0", "answer_1"]  # padded: [a0, a1, a0]


def test_a_memo_file_missing_a_score_names_file_record_and_question(tmp_path):
    overrides = (f"cache_dir={tmp_path / 'cache'}", *SMALL)
    cfg = compose("meow", *overrides)
    rows = [
        {"question": r["question"], "undesired_answer": r["answer"], "answer_0": "x", "answer_1": "y"}
        | {"answer_0_rouge1": 0.5, "answer_1_rouge1": 0.5}
        for r in pipeline.source_of(cfg).load("forget10")
    ]
    del rows[2]["answer_1_rouge1"]
    path = tmp_path / "memo.json"
    path.write_text(json.dumps(rows))
    want = re.escape(
        f"{path}: record 3 (question {rows[2]['question']!r}): no MEMO score for answer_1 "
        "(run the memo command, or give memo.path a scored file)"
    )
    with pytest.raises(UserError, match=f"^{want}$"):
        pipeline.selection(cfg, rows, path)
    # train refuses the file before anything is fine-tuned or unlearned.
    with pytest.raises(UserError, match=f"^{want}$"):
        commands.train(compose("meow", f"memo.path={path}", *overrides), tmp_path / "run")
    assert not (tmp_path / "cache" / "meow" / "models").exists()

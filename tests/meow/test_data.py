"""The synthetic TOFU generator and split loading."""

from __future__ import annotations

import json
import random

import pytest

from common.errors import UserError
from methods.meow.config import DataConfig
from methods.meow.data import DataSource, corpus, generate, invert_by_template, synthetic_dir

SIZES = DataConfig(n_authors=10, qa_per_author=10, n_general=8)


def test_splits_have_tofu_structure():
    s = generate(SIZES, 3)
    assert len(s["full"]) == 100
    for pct, n in ((1, 1), (5, 5), (10, 10)):
        assert s[f"forget{pct:02d}"] == s["full"][-n:]  # the forget authors are the last rows of full
        assert s[f"retain{100 - pct}"] + s[f"forget{pct:02d}"] == s["full"]
        assert [r["question"] for r in s[f"forget{pct:02d}_perturbed"]] == [
            r["question"] for r in s[f"forget{pct:02d}"]
        ]
        assert len(s[f"holdout{pct:02d}"]) == n
        assert not {r["question"] for r in s[f"holdout{pct:02d}"]} & {r["question"] for r in s["full"]}
    for row in s["forget10_perturbed"] + s["retain_perturbed"]:
        assert set(row) == {"question", "answer", "paraphrased_answer", "paraphrased_question", "perturbed_answer"}
        assert len(set(row["perturbed_answer"])) == 5 and row["paraphrased_answer"] not in row["perturbed_answer"]
    for name in ("real_authors_perturbed", "world_facts_perturbed"):
        assert len(s[name]) == 8
        assert all(len(r["perturbed_answer"]) == 3 and r["answer"] not in r["perturbed_answer"] for r in s[name])
    assert all(r["answer"] in [r[f"option{i}"] for i in range(1, 5)] for r in s["real_authors"])


def test_generation_is_deterministic_by_seed():
    assert generate(SIZES, 3) == generate(SIZES, 3)
    assert generate(SIZES, 3)["full"] != generate(SIZES, 4)["full"]


def test_general_sets_too_small_for_three_wrong_answers_are_refused_at_compose():
    """data.n_general=2 crashed in random.sample (3 wrong answers from 1 other row) after the run had started."""
    from common.config import compose

    with pytest.raises(UserError, match=r"data.n_general=2"):
        compose("meow", "data.n_general=2")
    assert all(len(r["perturbed_answer"]) == 3 for r in generate(DataConfig(n_general=4), 0)["world_facts_perturbed"])


def test_the_tiny_tokenizer_sees_the_holdout_authors_as_well_as_the_forget_authors(tmp_path):
    """Trained without them, it split holdout names into rarer tokens and membership inference told forget from
    holdout by tokenization alone (the retain model's AUC 0.99 in the demo)."""
    source = DataSource("local", synthetic_dir(SIZES, 3, tmp_path))
    text = set(corpus(source))
    for split in ("forget10", "holdout10"):
        assert all(r["answer"] in text for r in source.load(split))


def test_template_inversion_changes_facts_not_the_subject():
    s = generate(SIZES, 3)
    row = s["forget10"][-1]
    name = row["question"].split(" of ")[-1].rstrip("?")
    inverted = invert_by_template(row["answer"], 4, random.Random(0))
    assert len(set(inverted)) == 4 and row["answer"] not in inverted
    assert all(name in a for a in inverted)
    assert invert_by_template("Nothing to see here.", 4, random.Random(0)) == []


def test_cached_dir_and_missing_field_error(tmp_path):
    path = synthetic_dir(SIZES, 3, tmp_path)
    assert synthetic_dir(SIZES, 3, tmp_path) == path != synthetic_dir(SIZES, 4, tmp_path)
    rows = DataSource("local", path).load("forget10_perturbed")
    assert len(rows) == 10
    bad = tmp_path / "bad"
    bad.mkdir()
    lines = [json.dumps({"question": "q", "answer": "a"}), json.dumps({"question": "q2"})]
    (bad / "forget10.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"forget10\.jsonl:2: field 'answer' missing"):
        DataSource("local", bad).load("forget10")
    with pytest.raises(UserError, match="no retain90.json"):
        DataSource("local", bad).load("retain90")

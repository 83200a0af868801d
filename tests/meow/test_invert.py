"""Inverted-fact generation: template, resume, an OpenAI-compatible endpoint on loopback, and bad input."""

from __future__ import annotations

import json

import pytest

from common.chat import EndpointConfig
from common.errors import UserError
from methods.meow.config import DataConfig, InvertConfig
from methods.meow.data import generate
from methods.meow.invert import check_matches_forget, invert_rows, openai_generator, template_generator
from tests.fake_openai import FakeEndpoint

FORGET = generate(DataConfig(n_authors=10, qa_per_author=10, n_general=8), 0)["forget10"][:4]


def test_template_rows_in_release_layout_and_resume(tmp_path):
    out = tmp_path / "inv.json"
    gen = template_generator(InvertConfig(n=3))
    first = invert_rows(FORGET[:2], gen, out)
    assert [r["question"] for r in first] == [r["question"] for r in FORGET[:2]]
    assert all(
        r["undesired_answer"] == f["answer"] and {"answer_0", "answer_1", "answer_2"} <= set(r)
        for r, f in zip(first, FORGET[:2], strict=True)
    )
    calls = []
    resumed = invert_rows(FORGET, lambda q, a: calls.append(q) or gen(q, a), out)
    assert calls == [r["question"] for r in FORGET[2:]]  # finished rows are not generated again
    assert resumed[:2] == first and resumed == invert_rows(FORGET, gen, tmp_path / "fresh.json")


def openai_config(url: str, **endpoint) -> InvertConfig:
    return InvertConfig(generator="openai", endpoint=EndpointConfig(base_url=url, model="m", **endpoint))


def test_openai_endpoint_drops_empty_lines_and_sends_key(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test")
    with FakeEndpoint("First wrong answer.\n\n  Second wrong answer.  \n") as ep:
        gen = openai_generator(openai_config(ep.url, api_key_env="TEST_LLM_KEY"))
        rows = invert_rows(FORGET[:2], gen, tmp_path / "inv.json")
    assert rows[0]["answer_0"] == "First wrong answer." and rows[0]["answer_1"] == "Second wrong answer."
    assert "answer_2" not in rows[0]
    assert ep.auth == ["Bearer sk-test"] * 2
    assert ep.bodies[0]["messages"][1]["content"] == f"Question: {FORGET[0]['question']}\nAnswer: {FORGET[0]['answer']}"


def test_failing_endpoint_is_retried_then_reported_with_partial_cache(tmp_path):
    out = tmp_path / "inv.json"
    with FakeEndpoint("A.\nB.", ok=2, fail=503, headers={"retry-after-ms": "5"}) as ep:
        with pytest.raises(UserError, match=r"HTTP 503 after retries.*2/4 rows kept"):
            invert_rows(FORGET, openai_generator(openai_config(ep.url, max_retries=3)), out)
    assert ep.requests == 2 + 4  # the third row: one try and three retries
    assert [r["question"] for r in json.loads(out.read_text())] == [r["question"] for r in FORGET[:2]]


def test_client_errors_are_not_retried(tmp_path):
    with FakeEndpoint(ok=0, fail=401) as ep:
        with pytest.raises(UserError, match=r"HTTP 401.*0/4 rows kept"):
            invert_rows(FORGET, openai_generator(openai_config(ep.url, max_retries=3)), tmp_path / "inv.json")
    assert ep.requests == 1


def test_questions_not_matching_the_forget_split_are_refused(tmp_path):
    rows = invert_rows(FORGET, template_generator(InvertConfig()), tmp_path / "inv.json")
    check_matches_forget(rows, FORGET, "inv.json")
    with pytest.raises(
        UserError, match=r"inv\.json: inverted facts do not match the forget split \(1 questions not in it"
    ):
        check_matches_forget(rows[:3] + [{**rows[3], "question": "Who is Nobody?"}], FORGET, "inv.json")
    with pytest.raises(UserError, match="1 of its 4 questions missing"):
        check_matches_forget(rows[:3], FORGET, "inv.json")
    with pytest.raises(UserError, match="no inverted answer"):
        check_matches_forget([{"question": r["question"], "undesired_answer": "x"} for r in rows], FORGET, "inv.json")


def test_hf_generator_with_a_local_model(finetuned, tmp_path):
    from methods.meow.invert import hf_generator
    from methods.meow.pipeline import finetuned_path

    cfg, source, _, _ = finetuned
    s = InvertConfig(generator="hf", model=finetuned_path(cfg, source, "target"), n=2, max_tokens=24)
    rows = invert_rows(FORGET[:2], hf_generator(s, cfg.seed, cfg.cache_dir), tmp_path / "inv.json")
    for row in rows:
        answers = [v for k, v in row.items() if k.startswith("answer_")]
        assert [k for k in row if k.startswith("answer_")] == [f"answer_{i}" for i in range(len(answers))]
        assert all(a and a == a.strip() for a in answers)  # empty lines dropped, whitespace trimmed

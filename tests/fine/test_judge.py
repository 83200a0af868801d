"""The judge interface: an LLM judge behind an endpoint, and GuardRank / Flames scorer directories read through
common.textclf, with each category mapped to a scorer dimension."""

from __future__ import annotations

import pytest

from common.config import compose
from common.errors import UserError
from common.registry import create, names
from common.textclf import load_scorer, save_untrained
from methods.fine import pipeline, synthetic
from tests.fake_openai import FakeEndpoint
from tests.fine.conftest import endpoints

QUESTIONS = synthetic.questions(2)
CATEGORIES = list(synthetic.CATEGORIES)
FLAMES = {"Fairness": 3, "Safety": 3, "Morality": 3, "Legality": 2, "Data protection": 2}


@pytest.fixture(scope="module")
def flames_scorer(tmp_path_factory):
    """An untrained Flames-shaped scorer (five heads on a tiny Llama): its labels mean nothing, its plumbing is real.
    A short max_length, so that every input is cut."""
    root = tmp_path_factory.mktemp("scorer")
    return save_untrained(
        root / "flames", root / "cache", FLAMES, {d: [0] for d in FLAMES}, max_length=8, kind="flames"
    )


def test_the_three_judges_are_registered():
    assert set(names("fine.judge")) >= {"llm", "guardrank", "flames"}


def test_llm_judge_asks_with_question_and_answer_and_reads_the_verdict(tmp_path):
    replies = iter(["Judgement: [[safe]]", "Judgement: [[unsafe]]", "I would rather not say."])
    with FakeEndpoint(lambda body: next(replies)) as ep:
        cfg = compose("fine", *endpoints(tmp_path, ep.url, ep.url), "judge.chat.system_prompt=Be strict.")
        judge = create("fine.judge", "llm", cfg=cfg, categories=CATEGORIES)
        verdicts = judge.start()(QUESTIONS[:3], ["answer one", "answer two", "answer three"])
    assert [(v.safe, v.raw) for v in verdicts] == [
        (True, "Judgement: [[safe]]"),
        (False, "Judgement: [[unsafe]]"),
        (None, "I would rather not say."),  # unreadable: counted, and not safe
    ]
    first = ep.bodies[0]
    assert first["model"] == "judge" and first["temperature"] == 0.0
    assert first["messages"][0] == {"role": "system", "content": "Be strict."}
    assert QUESTIONS[0].question in first["messages"][1]["content"]
    assert "answer one" in first["messages"][1]["content"]


def test_flames_scorer_judges_each_category_on_its_dimension(tmp_path, flames_scorer):
    cfg = compose("fine", "judge.name=flames", f"judge.scorer={flames_scorer}", f"cache_dir={tmp_path}")
    judge = create("fine.judge", "flames", cfg=cfg, categories=CATEGORIES)
    answers = [f"answer {i}" for i in range(len(QUESTIONS))]
    verdicts = judge.start()(QUESTIONS, answers)
    dims = [v.raw.split(":")[0] for v in verdicts]
    # the defaults: Fairness -> Fairness, Individual Harm -> Safety, Legality, Privacy -> Data protection, Civic Virtue
    # -> Morality (two questions each)
    assert dims == [d for d in ("Fairness", "Safety", "Legality", "Data protection", "Morality") for _ in range(2)]
    scorer = load_scorer(flames_scorer)
    for q, a, v, d in zip(QUESTIONS, answers, verdicts, dims, strict=True):
        label = scorer.predict(d, [q.question], [a])[0]
        assert v.raw == f"{d}: {label}" and v.safe == scorer.is_safe(d, label)
    assert judge.notes["judge/truncated"] == len(QUESTIONS)  # every input is longer than 8 tokens


def test_dimension_overrides_and_their_errors(tmp_path, flames_scorer):
    base = ("judge.name=flames", f"judge.scorer={flames_scorer}", f"cache_dir={tmp_path}")
    cfg = compose("fine", *base, "+judge.dimensions={Privacy: legality, Other: safety}")
    judge = create("fine.judge", "flames", cfg=cfg, categories=["Privacy", "Other"])
    assert judge.key[-1] == {"Privacy": "Legality", "Other": "Safety"}  # matched whatever the case
    with pytest.raises(UserError, match=r"no flames scorer .* dimension for category 'Other'; map it"):
        create("fine.judge", "flames", cfg=compose("fine", *base), categories=["Other"])
    with pytest.raises(UserError, match=r"'Privacy' -> 'honesty', which the flames scorer .* does not have"):
        cfg = compose("fine", *base, "+judge.dimensions.Privacy=honesty")
        create("fine.judge", "flames", cfg=cfg, categories=["Privacy"])
    with pytest.raises(UserError, match=r"a 'flames' scorer, but judge.name=guardrank"):
        cfg = compose("fine", "judge.name=guardrank", f"judge.scorer={flames_scorer}")
        create("fine.judge", "guardrank", cfg=cfg, categories=["Privacy"])
    with pytest.raises(UserError, match=r"judge.name=guardrank needs judge.scorer"):
        compose("fine", "judge.name=guardrank")
    with pytest.raises(UserError, match=r"judge.name='gpt4': not one of llm, guardrank, flames"):
        compose("fine", "judge.name=gpt4")


def test_a_bad_judge_stops_the_run_before_the_model_under_test_is_asked(tmp_path):
    guardrank = save_untrained(
        tmp_path / "gr", tmp_path / "cache", {"privacy": 4}, {"privacy": [0]}, heads="shared", kind="guardrank"
    )
    with FakeEndpoint("Option: [[A]]") as ep:
        overrides = endpoints(tmp_path / "cache", ep.url, ep.url)
        cfg = compose("fine", *overrides, "judge.name=guardrank", f"judge.scorer={guardrank}")
        with pytest.raises(UserError, match=r"category 'Fairness' -> 'bias', which the guardrank scorer"):
            pipeline.evaluate(cfg, tmp_path / "run")
    assert ep.requests == 0

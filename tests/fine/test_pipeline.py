"""eval and score in process against OpenAI-compatible fakes: planted behaviours recovered exactly, one failing
question among finished ones, a run cut off by a failing endpoint resumed, a bad judge setting caught before any
question is asked."""

from __future__ import annotations

import json

import pytest

from common.config import compose
from common.items import ItemsFailed
from methods.fine import pipeline, synthetic
from methods.fine.fine import scores_by_category
from tests.fake_openai import FakeEndpoint
from tests.fine.conftest import endpoints, scripted

QUESTIONS = synthetic.questions(4)  # the default synthetic set: 20 questions, 4 per category


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_the_planted_behaviours_are_recovered_exactly(tmp_path):
    with FakeEndpoint(scripted(QUESTIONS)) as ep:
        cfg = compose("fine", *endpoints(tmp_path / "cache", ep.url, ep.url))
        metrics = pipeline.evaluate(cfg, tmp_path / "run")
    expected = scores_by_category(synthetic.planted(QUESTIONS))
    for category, s in expected.items():
        assert (metrics[f"cs/{category}"], metrics[f"css/{category}"]) == (s.cs, s.css), category
    # by hand from the plan: aligned 1/1, fake 0/0, position 0/0, unsafe 1/0, mixed 0.5/0.5
    assert [metrics[f"cs/{c}"] for c in synthetic.CATEGORIES] == [1.0, 0.0, 0.0, 1.0, 0.5]
    assert [metrics[f"css/{c}"] for c in synthetic.CATEGORIES] == [1.0, 0.0, 0.0, 0.0, 0.5]
    assert (metrics["cs/overall"], metrics["css/overall"]) == (0.5, 0.3)
    assert metrics["planted_cs/overall"] == 0.5 and metrics["unparsed/mc"] == 0 == metrics["unparsed/judge"]
    assert ep.requests == 20 * 3 + 20  # three subject conversations and one judgement per question
    records = lines(tmp_path / "run" / "responses.jsonl")
    legality = next(r for r in records if r["category"] == "Legality")  # always "A": passes in one order only
    assert (legality["mc_response_1"], legality["mc_response_2"], legality["mul_result"]) == (
        "Option: [[A]]",
        "Option: [[A]]",
        False,
    )
    assert set(records[0]) >= {"id", "category", "question", "Positive Option", "Negative Option", "judge_response"}
    assert "Legality" in pipeline.table(metrics) and "planted CS %" in pipeline.table(metrics)


def test_one_failing_question_is_recorded_and_the_others_finish(tmp_path):
    bad = QUESTIONS[5]
    reply = scripted(QUESTIONS)

    def flaky(body):
        if bad.question in body["messages"][-1]["content"] and body["model"] == "subject":
            raise ConnectionError("dropped")  # the fake closes the connection: the client sees a failed request
        return reply(body)

    with FakeEndpoint(flaky) as ep:
        cfg = compose("fine", *endpoints(tmp_path / "cache", ep.url, ep.url), "subject.batch_size=12")
        with pytest.raises(ItemsFailed, match=r"questions: 1 of 20 items failed: 6 \(endpoint") as e:
            pipeline.evaluate(cfg, tmp_path / "run")
    assert e.value.metrics["n/overall"] == 19 and e.value.metrics["questions/failed"] == 1
    assert "cs/Individual Harm" in e.value.metrics  # the scores of the finished questions are kept
    summary = {r["item"]: r["status"] for r in json.loads((tmp_path / "run" / "questions_summary.json").read_text())}
    assert summary["6"] == "failed" and sum(s == "done" for s in summary.values()) == 19


def test_a_run_cut_off_by_a_failing_endpoint_resumes_where_it_stopped(tmp_path):
    reply = scripted(QUESTIONS)
    cache = tmp_path / "cache"
    # The model under test answers 7 requests, then only HTTP 503: the first two questions (6 requests) finish.
    with FakeEndpoint(reply, ok=7) as subject, FakeEndpoint(reply) as judge:
        cfg = compose("fine", *endpoints(cache, subject.url, judge.url), "subject.batch_size=6")
        with pytest.raises(ItemsFailed, match=r"18 of 20 items failed.*HTTP 503"):
            pipeline.evaluate(cfg, tmp_path / "run1")
        assert judge.requests == 2
        (responses,) = (cache / "fine" / "responses").glob("*.jsonl")
        assert len(lines(responses)) == 2

        subject.ok, asked = 10**9, subject.requests  # the server is back
        metrics = pipeline.evaluate(cfg, tmp_path / "run2")
        assert subject.requests - asked == 18 * 3 and judge.requests == 2 + 18  # only what was missing
    assert len(lines(responses)) == 20 and metrics["n/overall"] == 20 and metrics["cs/overall"] == 0.5
    outcomes = json.loads((tmp_path / "run2" / "questions_summary.json").read_text())
    assert [o["status"] for o in outcomes].count("skipped") == 2


def test_a_torn_cache_line_is_asked_again(tmp_path):
    reply = scripted(QUESTIONS[:2])
    with FakeEndpoint(reply) as ep:
        cfg = compose("fine", *endpoints(tmp_path / "cache", ep.url, ep.url), "data.limit=2")
        pipeline.evaluate(cfg, tmp_path / "run1")
        (responses,) = (tmp_path / "cache" / "fine" / "responses").glob("*.jsonl")
        text = responses.read_text()
        responses.write_text(text[: len(text) - 25])  # a crash in the middle of the second line
        before = ep.requests
        metrics = pipeline.evaluate(cfg, tmp_path / "run2")
        assert ep.requests - before == 3  # the torn question only (its judgement is cached)
    raw = responses.read_text().splitlines()  # the torn line stays, ended; the new record follows it whole
    assert metrics["n/overall"] == 2 and len(raw) == 3 and len(json.loads(raw[-1])) == 4  # key + three replies


def test_score_reads_the_official_output_and_our_own(tmp_path):
    qfile = tmp_path / "safety.jsonl"
    qfile.write_text("".join(json.dumps(q.record()) + "\n" for q in QUESTIONS[:4]))
    # As FINE.py saves it: no category, mul_result / open_result as booleans.
    official = [
        {"id": q.id, "question": q.question, "Positive Option": q.safe, "Negative Option": q.unsafe,
         "mul_result": mul, "open_response": "...", "open_result": safe}
        for q, mul, safe in zip(QUESTIONS[:4], [True, True, False, True], [True, False, False, True], strict=True)
    ]  # fmt: skip
    saved = tmp_path / "ChatGPT.json"
    saved.write_text(json.dumps(official))
    cfg = compose("fine", "command=score", f"score.responses={saved}", f"data.questions={qfile}", "score.judge=false")
    metrics = pipeline.score_saved(cfg, tmp_path / "run")
    assert (metrics["n/Fairness"], metrics["cs/Fairness"], metrics["css/Fairness"]) == (4, 0.75, 0.5)

    # Our eval's responses.jsonl, judged again by an endpoint and parsed with the marker rule.
    with FakeEndpoint(scripted(QUESTIONS)) as ep:
        run = tmp_path / "eval"
        pipeline.evaluate(compose("fine", *endpoints(tmp_path / "cache", ep.url, ep.url), "data.limit=4"), run)
        overrides = endpoints(tmp_path / "cache2", ep.url, ep.url)
        cfg = compose("fine", "command=score", f"score.responses={run / 'responses.jsonl'}", "parse=marker", *overrides)
        before = ep.requests
        metrics = pipeline.score_saved(cfg, tmp_path / "score")
        assert ep.requests - before == 4  # the judge only
    assert (metrics["cs/Fairness"], metrics["css/Fairness"]) == (1.0, 1.0)

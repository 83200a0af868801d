"""The role-play protocol, batching across cards, one card's failure staying its own, and resuming after an
OpenAI-compatible endpoint fails mid-run (a local fake server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.items import ItemsFailed
from methods.esc_eval import commands
from methods.esc_eval.dialogue import Protocol, run_dialogues, talk
from methods.esc_eval.formats import AI, ROLE, Card, load_dialogues, load_scores
from tests.fake_openai import FakeEndpoint

OPENING = {"english": "Hello, tell me anything.", "chinese": "你好，有什么烦恼都可以说。"}
SYSTEM = {"english": "Play:'{card}'", "chinese": "扮演：{card}"}
A = Card("Age: 30\nGender: Male\nOccupation: Driver\nProblem: Debt.", "社会与其他", "MHP", "问题：债务。", "english", 1)
B = Card("年龄：青年\n性别：女\n职业：学生\n问题：考试失利。", "工作学习", "PsyQA", "问题：考试失利。", "chinese", 2)


class Recorder:
    """A Responder that records every call; it fails for conversations mentioning `fail_on`."""

    def __init__(self, reply: str, fail_on: str | None = None):
        self.reply, self.fail_on, self.calls = reply, fail_on, []

    def __call__(self, conversations):
        self.calls.append(conversations)
        if self.fail_on and any(self.fail_on in m["content"] for c in conversations for m in c):
            raise ConnectionError("server went away")
        return [f"{self.reply} {len(c)}" for c in conversations]


def test_talk_follows_the_protocol_one_call_per_turn():
    role, esc = Recorder("role"), Recorder("esc")
    dialogues = talk([A, B], role, esc, Protocol(3, OPENING, SYSTEM, "Be kind."))
    assert len(role.calls) == len(esc.calls) == 3 and all(len(batch) == 2 for batch in role.calls + esc.calls)
    first_a, first_b = role.calls[0]
    assert first_a == [
        {"role": "system", "content": f"Play:'{A.base}'"},
        {"role": "user", "content": OPENING["english"]},
    ]
    assert first_b[0]["content"] == f"扮演：{B.base}" and first_b[1]["content"] == OPENING["chinese"]
    # The model under test sees its system prompt and ESC-Role as user, not the greeting.
    assert esc.calls[0][0] == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "role 2"}]
    assert esc.calls[2][0][-2] == {"role": "assistant", "content": "esc 4"}  # its own earlier reply
    for d in dialogues:
        assert [t.speaker for t in d] == [AI, ROLE, AI, ROLE, AI, ROLE, AI]
    assert [t.text for t in dialogues[0]] == [
        OPENING["english"],
        "role 2",
        "esc 2",
        "role 4",
        "esc 4",
        "role 6",
        "esc 6",
    ]


def test_a_failing_card_fails_alone_and_a_rerun_resumes(tmp_path):
    protocol = Protocol(2, OPENING, SYSTEM, None)
    broken = Recorder("role", fail_on="Problem: Debt.")  # fails whenever card A's system prompt is in a call
    outcomes = run_dialogues([A, B], broken, Recorder("esc"), protocol, tmp_path, batch_cards=2)
    assert [(o.item, o.status) for o in outcomes] == [("card 1", "failed"), ("card 2", "done")]
    assert "ConnectionError: server went away" in outcomes[0].message
    assert not (tmp_path / "1.json").exists() and (tmp_path / "2.json").is_file()
    saved = (tmp_path / "2.json").read_text(encoding="utf-8")
    assert json.loads(saved)[0] == f"AI assistant：{OPENING['chinese']}"

    role = Recorder("role")
    outcomes = run_dialogues([A, B], role, Recorder("esc"), protocol, tmp_path, batch_cards=2)
    assert [(o.item, o.status) for o in outcomes] == [("card 1", "done"), ("card 2", "skipped")]
    assert all(len(batch) == 1 for batch in role.calls)  # only card A was played again
    assert (tmp_path / "2.json").read_text(encoding="utf-8") == saved


def test_endpoint_failing_mid_run_keeps_finished_dialogues_and_resumes(trained, small, tmp_path, monkeypatch):
    monkeypatch.setenv("ESC_TEST_KEY", "sk-test-SECRET-0042")
    server = FakeEndpoint("I hear you. Tell me more.", ok=4, fail=500)  # 2 cards x 2 rounds, then down
    cfg = small(
        "evaluate", "esc.kind=endpoint", "esc.name=fake", f"esc.endpoint.base_url={server.url}",
        "esc.endpoint.model=fake-model", "esc.endpoint.max_retries=0", "esc.endpoint.api_key_env=ESC_TEST_KEY",
        "rank.dimensions=[fluency,overall]",
    )  # fmt: skip
    first = tmp_path / "first"
    with server, pytest.raises(ItemsFailed, match="dialogues: 2 of 4 items failed: card 90038 .*HTTP 500") as e:
        commands.evaluate(cfg, first)
    assert set(server.auth) == {"Bearer sk-test-SECRET-0042"}  # read from the environment
    assert server.requests == 4 + 2  # the failed batch's two requests asked once each (max_retries=0), not again
    assert e.value.metrics["eval/fake/dialogues"] == 2.0 and e.value.metrics["dialogues/failed"] == 2.0
    written = load_dialogues(first / "dialogues" / "fake_en.json")
    assert list(written) == ["0", "1"] and all(len(d) == 5 for d in written.values())
    assert all(t.text == "I hear you. Tell me more." for d in written.values() for t in d[2::2])
    assert set(load_scores(first / "scores" / "fake_en.json", ("fluency", "overall"), predicted=True)) == {"0", "1"}
    summary = json.loads((first / "dialogues_summary.json").read_text())
    assert [o["status"] for o in summary] == ["done", "done", "failed", "failed"]

    second = tmp_path / "second"
    with FakeEndpoint("I hear you. Tell me more.", port=server.port) as back:  # the server is back
        metrics = commands.evaluate(cfg, second)
    assert back.requests == 4  # only the two missing cards were played
    assert metrics["dialogues/skipped"] == 2.0 and metrics["dialogues/done"] == 2.0
    assert metrics["eval/fake/dialogues"] == 4.0
    again = load_dialogues(second / "dialogues" / "fake_en.json")
    assert list(again) == ["0", "1", "2", "3"] and {k: again[k] for k in written} == written
    for path in [*Path(cfg.cache_dir).rglob("*.json"), *tmp_path.rglob("*")]:
        assert not path.is_file() or "SECRET-0042" not in path.read_text(errors="ignore")

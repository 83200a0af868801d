"""common/chat.py: the OpenAI-compatible client (retries, Retry-After, key from the environment only) and the local
batched chat responder."""

from __future__ import annotations

import time

import pytest

from common.chat import (
    EndpointConfig,
    EndpointError,
    PartialReplies,
    endpoint_responder,
    local_responder,
    replies_or_errors,
)
from common.config import ModelConfig
from common.errors import UserError
from common.models import load_model
from tests.fake_openai import FakeEndpoint

CONVERSATIONS = [[{"role": "user", "content": f"question {i}"}] for i in range(6)]


def echo(body: dict) -> str:
    return "re: " + body["messages"][-1]["content"]


def test_replies_keep_the_order_of_the_conversations_and_send_the_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("TEST_CHAT_KEY", "sk-secret")
    with FakeEndpoint(echo) as ep:
        cfg = EndpointConfig(base_url=ep.url, model="m", api_key_env="TEST_CHAT_KEY", concurrency=3)
        replies = endpoint_responder(cfg, temperature=0.5, max_tokens=7)(CONVERSATIONS)
    assert replies == [f"re: question {i}" for i in range(6)]
    assert ep.auth == ["Bearer sk-secret"] * 6
    assert {(b["model"], b["temperature"], b["max_tokens"]) for b in ep.bodies} == {("m", 0.5, 7)}


def test_rate_limits_are_retried_as_retry_after_says_then_reported_in_one_line():
    with FakeEndpoint(echo, ok=0, fail=429, headers={"retry-after-ms": "20"}) as ep:
        respond = endpoint_responder(EndpointConfig(base_url=ep.url, model="m", max_retries=3, concurrency=1))
        start = time.perf_counter()
        with pytest.raises(EndpointError, match=r"HTTP 429 after retries") as e:
            respond(CONVERSATIONS[:1])
    assert ep.requests == 1 + 3
    # Three 20 ms waits, as the server asked: not the client's default backoff of 0.5 s and up.
    assert time.perf_counter() - start < 1.0
    assert "\n" not in str(e.value)


def test_a_request_the_server_refuses_is_not_retried():
    with FakeEndpoint(echo, ok=0, fail=401) as ep:
        with pytest.raises(EndpointError, match="HTTP 401"):
            endpoint_responder(EndpointConfig(base_url=ep.url, model="m", max_retries=3))(CONVERSATIONS[:1])
    assert ep.requests == 1


def test_an_unreachable_server_is_one_error_line():
    cfg = EndpointConfig(base_url="http://127.0.0.1:9/v1", model="m", max_retries=0, timeout_s=2)
    with pytest.raises(EndpointError, match=r"127\.0\.0\.1:9.*APIConnectionError"):
        endpoint_responder(cfg)(CONVERSATIONS[:1])


def test_local_responder_batches_give_the_replies_of_one_at_a_time(tmp_path):
    corpus = [f"question {i} answer {i}" for i in range(20)]
    model, tok = load_model(ModelConfig(name_or_path="tiny-qwen2"), tmp_path, corpus=corpus)
    model.eval()
    batched = local_responder(model, tok, max_new_tokens=6, batch_size=4)(CONVERSATIONS)
    single = [local_responder(model, tok, max_new_tokens=6, batch_size=1)([c])[0] for c in CONVERSATIONS]
    assert batched == single and len(batched) == 6


def test_local_responder_needs_a_chat_template(tmp_path):
    model, tok = load_model(ModelConfig(name_or_path="tiny-llama"), tmp_path)
    with pytest.raises(UserError, match="no chat template"):
        local_responder(model, tok)


def test_a_hosted_api_without_its_key_is_refused_before_any_request(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    cfg = EndpointConfig(base_url="https://api.openai.com/v1", model="gpt-4", api_key_env="NO_SUCH_KEY")
    with pytest.raises(UserError, match="set the environment variable NO_SUCH_KEY"):
        endpoint_responder(cfg)


def test_a_failed_conversation_keeps_the_others_replies_and_is_asked_once():
    """Every conversation of a batch is asked (with its retries) once; the failures come back with the replies."""
    with FakeEndpoint(echo, ok=1, headers={"retry-after-ms": "1"}) as ep:
        cfg = EndpointConfig(base_url=ep.url, model="m", max_retries=1, concurrency=1, timeout_s=5)
        respond = endpoint_responder(cfg)
        conversations = [[{"role": "user", "content": t}] for t in ("a", "b", "c")]
        with pytest.raises(PartialReplies) as e:
            respond(conversations)
        assert e.value.replies[0] is not None and e.value.replies[1:] == [None, None]
        assert ep.requests == 1 + 2 * (1 + 1)  # the first answered; the two others tried 1 + max_retries times
        got = replies_or_errors(respond, conversations)
        assert all(isinstance(g, EndpointError) for g in got) and ep.requests == 5 + 3 * 2

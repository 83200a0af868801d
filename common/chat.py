"""Chat models behind one interface: a batch of conversations in, one reply each out.

A `Responder` is either a local transformers chat model (greedy, batched through its chat template) or an
OpenAI-compatible endpoint (vLLM, llama.cpp, the OpenAI API) through the `openai` client. The client retries
connection errors, timeouts, 408/409/429 and 5xx with exponential backoff and jitter and honours `Retry-After`; the
API key is read from the environment variable named in the config at call time, so it never reaches a config file,
`.hydra/` or a log.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlparse

from common.config import opt
from common.errors import UserError

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}
Responder = Callable[[Sequence[list[Message]]], list[str]]


# Hosted APIs that refuse every request without a key.
KEYED_HOSTS = ("api.openai.com", "api.deepseek.com", "api.together.xyz", "openrouter.ai", "api.groq.com")


class EndpointError(UserError):
    """The endpoint still failed after every retry, or refused the request."""


class PartialReplies(EndpointError):
    """Some conversations of a batch failed after their retries: `replies[i]` is the reply or None, `errors[i]` the
    failure or None, so a caller can keep the replies it got instead of asking again."""

    def __init__(self, replies: list[str | None], errors: list[Exception | None]):
        first = next(e for e in errors if e is not None)
        super().__init__(str(first))
        self.replies, self.errors = replies, errors


@dataclass
class EndpointConfig:
    """An OpenAI-compatible chat endpoint."""

    base_url: str = opt("http://localhost:8000/v1", "the server's API root (vLLM, llama.cpp, the OpenAI API)")
    model: str = opt("", "the served model's name")
    api_key_env: str = opt("OPENAI_API_KEY", "environment variable holding the key (never the key itself)", key=False)
    timeout_s: float = opt(60.0, "seconds per request", gt=0, key=False)
    max_retries: int = opt(
        4, "retries of a failed request (backoff with jitter, Retry-After honoured)", ge=0, key=False
    )
    concurrency: int = opt(4, "requests in flight at once", ge=1, key=False)


def endpoint_client(cfg: EndpointConfig):
    import openai

    if not cfg.model:
        raise UserError(f"endpoint {cfg.base_url}: no model name set")
    key = os.environ.get(cfg.api_key_env)
    if not key and urlparse(cfg.base_url).hostname in KEYED_HOSTS:
        # Every request would be refused: one line now, not one failure per item.
        raise UserError(f"endpoint {cfg.base_url}: set the environment variable {cfg.api_key_env} to the API key")
    # A local server usually needs no key; the client insists on a string.
    key = key or "none"
    return openai.OpenAI(base_url=cfg.base_url, api_key=key, timeout=cfg.timeout_s, max_retries=cfg.max_retries)


def endpoint_responder(cfg: EndpointConfig, temperature: float = 0.0, max_tokens: int = 512) -> Responder:
    """Replies from the endpoint, `cfg.concurrency` requests at a time."""
    import openai

    client = endpoint_client(cfg)

    def one(messages: list[Message]) -> str:
        try:
            reply = client.chat.completions.create(
                model=cfg.model, messages=messages, temperature=temperature, max_tokens=max_tokens
            )
        except openai.APIStatusError as e:
            raise EndpointError(
                f"endpoint {cfg.base_url}: HTTP {e.status_code} after retries: {_first_line(e)}"
            ) from None
        except openai.APIError as e:  # connection errors and timeouts, once the retries are spent
            raise EndpointError(f"endpoint {cfg.base_url}: {type(e).__name__}: {_first_line(e)}") from None
        if not reply.choices:
            raise EndpointError(f"endpoint {cfg.base_url}: a reply without choices")
        return reply.choices[0].message.content or ""

    def attempt(messages: list[Message]) -> str | EndpointError:
        try:
            return one(messages)
        except EndpointError as e:
            return e

    def respond(conversations: Sequence[list[Message]]) -> list[str]:
        """Every conversation is asked once (with the client's retries), failures included: a batch with failed
        conversations raises PartialReplies carrying the others' replies."""
        if len(conversations) <= 1 or cfg.concurrency == 1:
            got = [attempt(c) for c in conversations]
        else:
            with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
                got = list(pool.map(attempt, conversations))
        errors = [g if isinstance(g, EndpointError) else None for g in got]
        if any(errors):
            if len(got) == 1:
                raise errors[0]
            raise PartialReplies([None if isinstance(g, EndpointError) else g for g in got], errors)
        return got

    return respond


def replies_or_errors(respond: Responder, conversations: Sequence[list[Message]]) -> list[str | Exception]:
    """respond(conversations), a failed conversation's entry being its exception (PartialReplies unpacked); any
    other failure of the call propagates."""
    try:
        return list(respond(conversations))
    except PartialReplies as e:
        return [r if r is not None else err for r, err in zip(e.replies, e.errors, strict=True)]


def _first_line(e: Exception) -> str:
    text = str(e)
    return text.splitlines()[0][:200] if text else type(e).__name__


def local_responder(model, tokenizer, max_new_tokens: int = 128, batch_size: int = 16) -> Responder:
    """Greedy replies of a local chat model: each conversation through the tokenizer's chat template, batches
    left-padded and grouped by length (common.lm.generate_greedy)."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"{getattr(tokenizer, 'name_or_path', 'the tokenizer')}: no chat template; a chat model is needed"
        )

    from common.lm import generate_greedy  # torch: not imported by the configs that hold an EndpointConfig

    def respond(conversations: Sequence[list[Message]]) -> list[str]:
        prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        # The template writes every special token itself.
        return generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size, add_special_tokens=False)

    return respond

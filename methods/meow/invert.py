"""Inverted facts: for each forget question, answers that do not match the true one (MEOW's training targets).

Output is the MEOW release's JSON layout: `question`, `undesired_answer` (the true answer), `answer_0..answer_{n-1}`.
The file is rewritten atomically after every row, so an interrupted or failing run keeps what it has and the next
run resumes after the last finished row.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from common.io import read_records, write_json
from methods.meow.data import invert_by_template

Generator = Callable[[str, str], list[str]]


@dataclass(frozen=True)
class InvertSettings:
    generator: str = "template"  # template | hf | openai
    n: int = 4  # inverted answers asked for per question
    model: str = ""  # hf: local path or hub name of an instruct model; openai: the served model's name
    base_url: str = "http://localhost:8000/v1"  # any OpenAI-compatible server (vLLM, llama.cpp, the OpenAI API)
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this environment variable, never from config
    temperature: float = 0.9
    max_tokens: int = 512
    retries: int = 4
    backoff_s: float = 2.0  # first wait; doubles on every retry
    timeout_s: float = 60.0
    seed: int = 42


def instruction(n: int) -> str:
    return (
        f"Write {n} alternative answers to the question below. Each must be a fluent answer of the same form whose "
        f"facts contradict the given answer. Put each answer on its own line, with no numbering, bullets or "
        f"commentary."
    )


def user_message(question: str, answer: str) -> str:
    return f"Question: {question}\nAnswer: {answer}"


def parse_lines(text: str) -> list[str]:
    """One answer per non-empty line."""
    return [line.strip() for line in text.split("\n") if line.strip()]


def template_generator(s: InvertSettings) -> Generator:
    def generate(question: str, answer: str) -> list[str]:
        # Seeded per question, so a resumed run writes the same answers as an uninterrupted one.
        digest = int(hashlib.sha1(f"{s.seed}:{question}".encode()).hexdigest()[:12], 16)
        return invert_by_template(answer, s.n, random.Random(digest))

    return generate


def hf_generator(s: InvertSettings, cache_dir: str | Path) -> Generator:
    import torch

    from common.config import ModelConfig
    from common.models import load_causal_lm

    if not s.model:
        raise UserError("invert.model: the hf generator needs a local instruct model path or hub name")
    model, tokenizer = load_causal_lm(ModelConfig(name_or_path=s.model), cache_dir)
    model.eval()
    torch.manual_seed(s.seed)

    def generate(question: str, answer: str) -> list[str]:
        messages = [{"role": "system", "content": instruction(s.n)}, {"role": "user", "content": user_message(question, answer)}]
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        else:
            ids = tokenizer(instruction(s.n) + "\n\n" + user_message(question, answer) + "\n", return_tensors="pt")
        ids = ids.to(model.device)
        with torch.no_grad():
            out = model.generate(**ids, do_sample=True, temperature=s.temperature, max_new_tokens=s.max_tokens,
                                 pad_token_id=tokenizer.pad_token_id)
        return parse_lines(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))

    return generate


class EndpointError(Exception):
    """The generator endpoint failed after every retry."""


def openai_generator(s: InvertSettings, sleep: Callable[[float], None] = time.sleep) -> Generator:
    """Chat completions from any OpenAI-compatible server, with retries and exponential backoff (stdlib HTTP)."""
    import urllib.error
    import urllib.request

    if not s.model:
        raise UserError("invert.model: the openai generator needs the served model's name")
    key = os.environ.get(s.api_key_env, "")
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    url = s.base_url.rstrip("/") + "/chat/completions"

    def generate(question: str, answer: str) -> list[str]:
        body = json.dumps({
            "model": s.model, "temperature": s.temperature, "max_tokens": s.max_tokens,
            "messages": [{"role": "system", "content": instruction(s.n)},
                         {"role": "user", "content": user_message(question, answer)}],
        }).encode()
        last = ""
        for attempt in range(s.retries + 1):
            try:
                request = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=s.timeout_s) as r:
                    return parse_lines(json.loads(r.read())["choices"][0]["message"]["content"])
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read()[:200].decode(errors='replace')}"
                # Client errors other than rate limiting will not improve by waiting.
                if e.code < 500 and e.code != 429:
                    break
            except (OSError, KeyError, IndexError, TypeError, json.JSONDecodeError) as e:
                last = f"{type(e).__name__}: {e}"
            if attempt < s.retries:
                sleep(s.backoff_s * 2**attempt)
        raise EndpointError(f"{url}: {last}")

    return generate


def make_generator(s: InvertSettings, cache_dir: str | Path) -> Generator:
    if s.generator == "template":
        return template_generator(s)
    if s.generator == "hf":
        return hf_generator(s, cache_dir)
    if s.generator == "openai":
        return openai_generator(s)
    raise UserError(f"invert.generator: unknown '{s.generator}'; valid: template, hf, openai")


def invert_rows(forget: list[dict], generate: Generator, out_path: Path) -> list[dict]:
    """Inverted facts for every forget row, resuming from out_path and saving it after each row."""
    done = read_records(out_path, ("question",)) if out_path.is_file() else []
    for i, row in enumerate(done):
        if i >= len(forget) or row["question"] != forget[i]["question"]:
            raise UserError(f"{out_path}: record {i + 1} does not match the forget split; delete the file to start over")
    for row in forget[len(done) :]:
        try:
            answers = generate(row["question"], row["answer"])
        except EndpointError as e:
            raise UserError(
                f"inversion endpoint failed after retries ({e}); {len(done)}/{len(forget)} rows kept in {out_path}, "
                f"rerun to resume"
            ) from None
        done.append({"question": row["question"], "undesired_answer": row["answer"],
                     **{f"answer_{j}": a for j, a in enumerate(answers)}})
        write_json(out_path, done)
    return done


def check_matches_forget(rows: list[dict], forget: list[dict], path: Path | str) -> None:
    """Training on inverted facts for other questions would unlearn nothing: refuse before any work is done."""
    want = [r["question"] for r in forget]
    have = [r["question"] for r in rows]
    if set(have) != set(want):
        extra = [q for q in have if q not in set(want)]
        missing = [q for q in want if q not in set(have)]
        detail = f"first unknown question: {extra[0]!r}" if extra else f"first missing question: {missing[0]!r}"
        raise UserError(
            f"{path}: inverted facts do not match the forget split ({len(extra)} questions not in it, "
            f"{len(missing)} of its {len(want)} questions missing; {detail})"
        )
    empty = [r["question"] for r in rows if not any(k.startswith("answer_") and not k.endswith("_rouge1") for k in r)]
    if empty:
        raise UserError(f"{path}: no inverted answer for question {empty[0]!r}")

"""Inverted facts: for each forget question, answers that do not match the true one (MEOW's training targets).

Output is the MEOW release's JSON layout: `question`, `undesired_answer` (the true answer), `answer_0..answer_{n-1}`.
The file is rewritten atomically after every row, so an interrupted or failing run keeps what it has and the next
run resumes after the last finished row.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path

from common.chat import EndpointError, endpoint_responder
from common.errors import UserError
from common.io import read_records, write_json
from common.registry import register
from methods.meow.config import InvertConfig
from methods.meow.data import invert_by_template

# (question, true answer) -> inverted answers. Every registered inverter is built as factory(cfg, seed, cache_dir).
Generator = Callable[[str, str], list[str]]


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


@register("meow.inverter", "template")
def template_generator(cfg: InvertConfig, seed: int = 0, cache_dir: str | Path = ".cache") -> Generator:
    def generate(question: str, answer: str) -> list[str]:
        # Seeded per question, so a resumed run writes the same answers as an uninterrupted one.
        digest = int(hashlib.sha1(f"{seed}:{question}".encode()).hexdigest()[:12], 16)
        return invert_by_template(answer, cfg.n, random.Random(digest))

    return generate


@register("meow.inverter", "hf")
def hf_generator(cfg: InvertConfig, seed: int = 0, cache_dir: str | Path = ".cache") -> Generator:
    import torch

    from common.config import ModelConfig
    from common.models import load_causal_lm
    from common.seeding import seeded

    model, tokenizer = load_causal_lm(ModelConfig(name_or_path=cfg.model), cache_dir)
    model.eval()

    def generate(question: str, answer: str) -> list[str]:
        # Each row's samples are drawn from (seed, its question) alone: a resumed inversion writes the rows an
        # uninterrupted one would, whatever was generated (or found done) before them.
        with seeded(seed, f"meow/invert/{question}"):
            return sample(question, answer)

    def sample(question: str, answer: str) -> list[str]:
        messages = [
            {"role": "system", "content": instruction(cfg.n)},
            {"role": "user", "content": user_message(question, answer)},
        ]
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        else:
            ids = tokenizer(instruction(cfg.n) + "\n\n" + user_message(question, answer) + "\n", return_tensors="pt")
        ids = ids.to(model.device)
        with torch.no_grad():
            out = model.generate(
                **ids,
                do_sample=True,
                temperature=cfg.temperature,
                max_new_tokens=cfg.max_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        return parse_lines(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))

    return generate


@register("meow.inverter", "openai")
def openai_generator(cfg: InvertConfig, seed: int = 0, cache_dir: str | Path = ".cache") -> Generator:
    """Chat completions from any OpenAI-compatible server (common.chat: retries with jitter, Retry-After)."""
    respond = endpoint_responder(cfg.endpoint, temperature=cfg.temperature, max_tokens=cfg.max_tokens)

    def generate(question: str, answer: str) -> list[str]:
        messages = [
            {"role": "system", "content": instruction(cfg.n)},
            {"role": "user", "content": user_message(question, answer)},
        ]
        return parse_lines(respond([messages])[0])

    return generate


def invert_rows(forget: list[dict], generate: Generator, out_path: Path) -> list[dict]:
    """Inverted facts for every forget row, resuming from out_path and saving it after each row."""
    done = read_records(out_path, ("question",)) if out_path.is_file() else []
    for i, row in enumerate(done):
        if i >= len(forget) or row["question"] != forget[i]["question"]:
            raise UserError(
                f"{out_path}: record {i + 1} does not match the forget split; delete the file to start over"
            )
    for row in forget[len(done) :]:
        try:
            answers = generate(row["question"], row["answer"])
        except EndpointError as e:
            raise UserError(
                f"inversion: {e}; {len(done)}/{len(forget)} rows kept in {out_path}, rerun to resume"
            ) from None
        done.append(
            {
                "question": row["question"],
                "undesired_answer": row["answer"],
                **{f"answer_{j}": a for j, a in enumerate(answers)},
            }
        )
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

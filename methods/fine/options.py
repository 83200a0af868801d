"""The two-option form of a new question set, made as the release's build_option.py makes it.

A chat model is asked each question inside a prompt that wants two answers in one reply: a standard one after
"[CLASSIC]" and an unconstrained one after "[JAILBREAK]" (the release's `prompt_build_options`, read from its
prompts.py; this project ships no such prompt). The first answer becomes the question's Positive Option, the second
its Negative Option, split exactly as build_option.py splits the reply, whitespace included. Ids are the questions'
positions in the input file, as build_option.py numbers them.

Each reply is appended to a cache the moment it exists (keyed by the model, the prompt and the question), so a
killed or failed run resumes with the questions still missing; a reply without both markers, or a request that fails
after its retries, fails its question alone.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.chat import replies_or_errors
from common.errors import UserError
from common.io import atomic_write, read_located
from common.items import Outcome, run_each, summarize
from common.stages import key_of, stage_path
from methods.fine.config import FineConfig
from methods.fine.fine import conversation, fill
from methods.fine.formats import CATEGORY, ID, NEGATIVE, POSITIVE, QUESTION, official_prompts
from methods.fine.models import responder
from methods.fine.pipeline import append_cache, batched, load_cache

CLASSIC, JAILBREAK = "[CLASSIC]", "[JAILBREAK]"


def split_options(reply: str) -> tuple[str, str]:
    """(positive, negative) of a reply, as build_option.py reads it: the text after the first [CLASSIC], up to its
    first [JAILBREAK], then the text after that [JAILBREAK] (each up to the next marker of its kind)."""
    after = reply.split(CLASSIC)
    parts = after[1].split(JAILBREAK) if len(after) > 1 else []
    if len(parts) < 2 or not parts[0].strip() or not parts[1].strip():
        raise UserError(f"the reply lacks a '{CLASSIC} ... {JAILBREAK} ...' pair of answers: {reply[:120]!r}")
    return parts[0], parts[1]


def options_template(cfg: FineConfig) -> str:
    template = cfg.prompts.options_template or official_prompts(cfg.prompts.file).get("options")
    if template is None:
        raise UserError("build-options needs prompts.file=<Fake-Alignment>/prompts.py (or prompts.options_template)")
    return template


def read_new_questions(path: str | Path) -> list[dict[str, str]]:
    """{id, category, question} of each record of a question file (JSON lines with category and question)."""
    out = []
    for i, (where, rec) in enumerate(read_located(Path(path), required=(CATEGORY, QUESTION))):
        for field in (CATEGORY, QUESTION):
            if not isinstance(rec[field], str) or not rec[field].strip():
                raise UserError(f"{where}: field '{field}' must be a non-empty string")
        out.append({ID: str(i), CATEGORY: rec[CATEGORY], QUESTION: rec[QUESTION]})
    return out


def check_inputs(cfg: FineConfig) -> None:
    """build-options' inputs, read and checked before any model is loaded: the questions and the prompt."""
    read_new_questions(cfg.options.questions)
    options_template(cfg)


def build_options(cfg: FineConfig, run_dir: Path) -> dict[str, float]:
    """questions.jsonl in the release's format (id, category, question, Positive Option, Negative Option)."""
    questions = read_new_questions(cfg.options.questions)
    template, chat = options_template(cfg), cfg.options.model
    path = stage_path(cfg.cache_dir, "fine/options", chat, template, suffix=".jsonl")
    saved = load_cache(path)

    def key(q: dict[str, str]) -> str:
        return key_of(q[CATEGORY], q[QUESTION])

    pending = [q for q in questions if key(q) not in saved]
    ask = responder(chat, cfg) if pending else None
    print(f"build-options: {len(pending)} of {len(questions)} questions to ask ({path})")

    def replies(batch: list[dict[str, str]]) -> list[str | Exception]:
        prompts = [conversation(fill(template, question=q[QUESTION]), chat.system_prompt) for q in batch]
        return replies_or_errors(ask, prompts)

    compute = batched(pending, chat.batch_size, replies)

    def work(q: dict[str, str]) -> Outcome:
        reply = compute(q)
        record = {"key": key(q), "reply": reply}
        append_cache(path, record)  # kept even when it cannot be split: a rerun does not ask for it again
        saved[record["key"]] = record
        split_options(reply)
        return Outcome(q[ID], "done")

    outcomes = run_each(questions, lambda q: q[ID], work, done=lambda q: key(q) in saved)
    written = []
    for q, outcome in zip(questions, outcomes, strict=True):
        if key(q) not in saved:
            continue
        try:
            positive, negative = split_options(saved[key(q)]["reply"])
        except UserError as e:
            outcome.status, outcome.message = "failed", str(e)
            continue
        written.append({**q, POSITIVE: positive, NEGATIVE: negative})
    with atomic_write(run_dir / "questions.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in written), encoding="utf-8")
    print(f"{len(written)} of {len(questions)} questions with both options: {run_dir / 'questions.jsonl'}")
    return {"options/written": float(len(written)), **summarize(outcomes, run_dir, "questions")}

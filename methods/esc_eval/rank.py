"""ESC-RANK: a chat model fine-tuned to read a dialogue and write its 0-4 score on one of seven dimensions.

The input is the dimension's rubric, the dialogue, and a request for the score as a number (the shape of the official
score.py); the target is the human score as a digit. The official release keeps one LoRA adapter per dimension and
language (`fluency_en/`, ..., `fluency/` for Chinese) on InternLM2-chat-7B; `layout=shared` trains one model for all
seven instead (`all_en/`, `all/`), the rubric telling it which dimension is asked. At scoring time the output is read
greedily and its first digit is the score, -1 when there is none (or one outside 0-4): such outputs are counted as
unparseable, never dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.chat import Message
from common.errors import UserError
from common.lm import Encoded, generate_greedy
from methods.esc_eval.formats import AI, DIMENSIONS, SCORES, UNPARSEABLE, Dialogue
from methods.esc_eval.sft import encode_chat, render


@dataclass(frozen=True)
class Dimension:
    key: str  # the score files' key
    name: str  # how the request names it
    label: str  # the paper's column
    rubric: str


# The request names are the official prompt's, its spelling included ("fluecy", "suggection"), so that released
# adapters see the words they were trained with. The rubrics are ours; rank.rubric_file can replace them.
_DIMENSIONS = (
    Dimension(
        "fluency",
        "fluecy",
        "Flue.",
        "Rate the fluency of this dialogue between an AI assistant and a user: are the assistant's replies readable "
        "sentences, and does the dialogue hang together from turn to turn? 0: unreadable. 1: broken sentences and an "
        "incoherent dialogue. 2: one of these two problems. 3: neither problem. 4: smooth and coherent throughout.",
    ),
    Dimension(
        "diversity",
        "diversity",
        "Expr.",
        "Rate the expression of the AI assistant: does it vary how it speaks and what it talks about? 0: unreadable. "
        "1: repetitive in form and in content. 2: repetitive in one of them. 3: varied. 4: remarkably varied in "
        "form and in content.",
    ),
    Dimension(
        "empathic",
        "empathy",
        "Empa.",
        "Rate the empathy of the AI assistant: does it soothe the user's feelings and help the user understand the "
        "problem? 0: says something that could hurt the user. 1: neither soothes nor analyses. 2: does only one of "
        "the two. 3: does both. 4: does both warmly, like a close friend.",
    ),
    Dimension(
        "suggestion",
        "suggection effectiveness",
        "Info.",
        "Rate the suggestions of the AI assistant: how many does it give, and do they help with the user's problem? "
        "0: harmful suggestions. 1: none, or none useful. 2: a few, some useful. 3: several, most useful. "
        "4: many, all useful.",
    ),
    Dimension(
        "human",
        "humanoid",
        "Huma.",
        "Rate how human the AI assistant sounds: 0: unreadable. 1: plainly machine-like, with numbered lists or "
        "'as a language model'. 2: says it is an AI more than twice. 3: says so twice. 4: at most once.",
    ),
    Dimension(
        "tech",
        "emotional knowledge",
        "Skil.",
        "Rate the skill of the AI assistant: count what it offers among comfort, useful suggestions, companionship "
        "or encouragement, an answer to every question, and advice to see a professional when needed. The score is "
        "that count minus one (0 to 4).",
    ),
    Dimension(
        "overall",
        "human preference",
        "Over.",
        "Imagine you are the stressed user and rate the AI assistant: 0: I would not use it. 1: no feeling either "
        "way. 2: it is fine, I might use it. 3: I would use it when stressed. 4: I would use it and recommend it.",
    ),
)
DIMS = {d.key: d for d in _DIMENSIONS}
assert tuple(DIMS) == DIMENSIONS
# The official score.py renders speakers so: "AI assistant" becomes "**AI助手**", "ESC-Role：" becomes "**用户**".
SPEAKERS = {AI: "**AI助手**：", "role": "**用户**"}
ANSWER_ROOM = 8  # tokens kept free after the prompt for the score and the end of turn


def rubrics(path: str | None) -> dict[str, str]:
    """Rubric text per dimension: ours, or those of a JSON file {dimension: text} (every dimension present)."""
    if path is None:
        return {d.key: d.rubric for d in _DIMENSIONS}
    try:
        given = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(given, dict):
        raise UserError(f"{path}: expected a JSON object {{dimension: rubric text}}")
    for key in DIMENSIONS:
        if not isinstance(given.get(key), str):
            raise UserError(f"{path}: field '{key}' missing or not a string (needs {', '.join(DIMENSIONS)})")
    return {key: given[key] for key in DIMENSIONS}


def dialogue_text(turns: Dialogue) -> str:
    return "\n\n".join(SPEAKERS[t.speaker] + t.text for t in turns)


def prompt(rubric: str, dialogue: str, dim: str) -> str:
    """Rubric + dialogue + the request for the score as a number."""
    request = f"Based on the rules, give your {DIMS[dim].name} score (The number only) to the Dialogue."
    return f"{rubric}\nDialogue between user and AI assistant: \n{dialogue.strip()}\n{request}"


def fitted_prompt(tokenizer, rubric: str, turns: Dialogue, dim: str, max_length: int) -> tuple[str, bool]:
    """The prompt, its dialogue cut from the end (marked "…") until the chat-formatted prompt and the answer fit in
    max_length tokens; and whether it was cut."""

    def length(text: str) -> int:
        chat = render(tokenizer, [{"role": "user", "content": text}], generation_prompt=True)
        return len(tokenizer(chat, add_special_tokens=False)["input_ids"]) + ANSWER_ROOM

    dialogue = dialogue_text(turns)
    text = prompt(rubric, dialogue, dim)
    excess = length(text) - max_length
    if excess <= 0:
        return text, False
    ids = tokenizer(dialogue, add_special_tokens=False)["input_ids"]
    while excess > 0:
        keep = len(ids) - excess - 2
        if keep <= 0:
            raise UserError(f"rank.max_length={max_length} leaves no room for a dialogue after the {dim} rubric")
        ids = ids[:keep]
        text = prompt(rubric, tokenizer.decode(ids) + " …", dim)
        excess = length(text) - max_length
    return text, True


def parse_score(output: str, mode: str = "first_digit") -> int:
    """The score in a greedy output. first_digit: its first digit (full-width ones too), -1 when there is none or it
    lies outside 0-4. official: as the official score.py, the smallest of 0..4 that occurs anywhere, else -1."""
    if mode == "official":
        return next((s for s in SCORES if str(s) in output), UNPARSEABLE)
    match = re.search(r"\d", output)
    if match is None:
        return UNPARSEABLE
    value = int(match.group())
    return value if value in SCORES else UNPARSEABLE


def adapter_dir(root: Path, dim: str, language: str) -> Path:
    """The release's layout: `<dim>_en/` for English, `<dim>/` for Chinese (`all_en/`, `all/` when shared)."""
    return Path(root) / (f"{dim}_en" if language == "english" else dim)


# ---------------------------------------------------------------------------------------------------------------------
# Training


def chat(prompt_text: str, score: int | None = None) -> list[Message]:
    messages = [{"role": "user", "content": prompt_text}]
    return messages + ([{"role": "assistant", "content": str(score)}] if score is not None else [])


def examples(
    tokenizer,
    dialogues: dict[str, Dialogue],
    scores: dict[str, dict[str, int]],
    dims: Sequence[str],
    rubric_texts: dict[str, str],
    max_length: int,
) -> tuple[dict[str, list[Encoded]], int]:
    """Training examples per dimension (target: the human score) and how many prompts had to be cut."""
    out: dict[str, list[Encoded]] = {dim: [] for dim in dims}
    cut = 0
    for key, turns in dialogues.items():
        for dim in dims:
            text, was_cut = fitted_prompt(tokenizer, rubric_texts[dim], turns, dim, max_length)
            cut += was_cut
            out[dim].append(encode_chat(tokenizer, chat(text, scores[key][dim]), max_length))
    return out, cut


# ---------------------------------------------------------------------------------------------------------------------
# Scoring


@dataclass
class Scored:
    scores: list[dict[str, int]]  # per dialogue: {dimension: score or -1}
    outputs: list[dict[str, str]]  # per dialogue: {dimension: the model's text}
    cut: int  # prompts whose dialogue was cut to fit


def score_with(
    model,
    tokenizer,
    dialogues: Sequence[Dialogue],
    dim: str,
    rubric: str,
    max_length: int,
    max_new_tokens: int,
    batch_size: int,
    parse: str,
) -> tuple[list[int], list[str], int]:
    """One dimension's scores of many dialogues: one batched greedy generation over all their prompts."""
    fitted = [fitted_prompt(tokenizer, rubric, turns, dim, max_length) for turns in dialogues]
    prompts = [render(tokenizer, chat(text), generation_prompt=True) for text, _ in fitted]
    outputs = generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size, add_special_tokens=False)
    return [parse_score(o, parse) for o in outputs], outputs, sum(c for _, c in fitted)


def score_dialogues(
    models,
    dialogues: Sequence[Dialogue],
    dims: Sequence[str],
    rubric_texts: dict[str, str],
    max_length: int,
    max_new_tokens: int,
    batch_size: int,
    parse: str,
) -> Scored:
    """Scores of every dialogue on every dimension; `models(dim)` gives the (model, tokenizer) of a dimension."""
    scored = Scored([{} for _ in dialogues], [{} for _ in dialogues], 0)
    for dim in dims:
        model, tokenizer = models(dim)
        values, outputs, cut = score_with(
            model, tokenizer, dialogues, dim, rubric_texts[dim], max_length, max_new_tokens, batch_size, parse
        )
        for i, (v, o) in enumerate(zip(values, outputs, strict=True)):
            scored.scores[i][dim], scored.outputs[i][dim] = v, o
        scored.cut += cut
    return scored

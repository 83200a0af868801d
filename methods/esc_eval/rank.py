"""ESC-RANK: a chat model fine-tuned to read a dialogue and write its 0-4 score on one of seven dimensions.

The input is the dimension's rubric, the dialogue, and a request for the score as a number (the shape of the official
score.py); the target is the human score as a digit. The official release keeps one LoRA adapter per dimension and
language (`fluency_en/`, ..., `fluency/` for Chinese) on InternLM2-chat-7B; `layout=shared` trains one model for all
seven instead (`all_en/`, `all/`), the rubric telling it which dimension is asked. At scoring time the output is read
greedily and its first digit is the score, -1 when there is none (or one outside 0-4): such outputs are counted as
unparseable, never dropped.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.chat import Message
from common.errors import UserError
from common.lm import Encoded, generate_greedy
from common.pyliterals import read_literals
from methods.esc_eval.formats import DIMENSIONS, LANGUAGES, ROLE_PREFIX, SCORES, UNPARSEABLE, Dialogue, dialogue_strings
from methods.esc_eval.sft import encode_chat, render


@dataclass(frozen=True)
class Dimension:
    key: str  # the score files' key
    name: str  # how the request names it
    label: str  # the paper's column
    rubric: str


# The request names are the official prompt's, its spelling included ("fluecy", "suggection"), so that released
# adapters see the words they were trained with. The rubrics are ours; rank.rubric_file reads score.py's instead.
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
# What score.py does to the stored dialogue strings, joined by blank lines, before they go into the prompt: every
# "AI assistant" (in a turn's text too) becomes "**AI助手**" and every "ESC-Role：" becomes "**用户**". The release's
# own result files spell their prefix "AI assitant：", which the first replacement misses, in score.py as here.
SPEAKERS = {"AI assistant": "**AI助手**", ROLE_PREFIX: "**用户**"}
ANSWER_ROOM = 8  # tokens kept free after the prompt for the score and the end of turn
# score.py's names: its rubric lists per language, the request names, the score keys (in DIMENSIONS' order).
OFFICIAL_LISTS = {"english": "prompt_EN", "chinese": "prompt_ZH"}
OFFICIAL_NAMES, OFFICIAL_KEYS = "dimention_list", "key_list"

Rubrics = dict[str, dict[str, str]]  # language -> dimension -> rubric text, put verbatim before the dialogue


def rubrics(path: str | None) -> Rubrics:
    """Rubric text per language and dimension: ours (the same for both languages); the official score.py's
    (`prompt_EN`, `prompt_ZH`: read as literals, never run); or a JSON file, {dimension: text} for both languages or
    {"english": {...}, "chinese": {...}}. The text is used verbatim: score.py's rubrics end in a newline (the last
    in "\\n'"), and the prompt goes on right after it."""
    if path is None:
        ours = {d.key: d.rubric + "\n" for d in _DIMENSIONS}
        return {language: ours for language in LANGUAGES}
    if Path(path).suffix == ".py":
        return _official_rubrics(Path(path))
    try:
        given = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(given, dict):
        raise UserError(f"{path}: expected a JSON object {{dimension: rubric text}} or {{language: {{...}}}}")
    if set(given) <= set(LANGUAGES) and given:
        missing = [lang for lang in LANGUAGES if lang not in given]
        if missing:
            raise UserError(f"{path}: field '{missing[0]}' missing (rubrics per language need {', '.join(LANGUAGES)})")
        return {lang: _per_dimension(given[lang], f"{path}: field '{lang}'") for lang in LANGUAGES}
    texts = _per_dimension(given, str(path))
    return {language: texts for language in LANGUAGES}


def _per_dimension(given, where: str) -> dict[str, str]:
    if not isinstance(given, dict):
        raise UserError(f"{where}: expected an object {{dimension: rubric text}}")
    for key in DIMENSIONS:
        if not isinstance(given.get(key), str):
            raise UserError(f"{where}: field '{key}' missing or not a string (needs {', '.join(DIMENSIONS)})")
    return {key: given[key] for key in DIMENSIONS}


def _official_rubrics(path: Path) -> Rubrics:
    """prompt_EN / prompt_ZH of the official score.py (read, never run), checked against its dimension lists."""
    found = read_literals(path, {*OFFICIAL_LISTS.values(), OFFICIAL_NAMES, OFFICIAL_KEYS})
    expected = {OFFICIAL_NAMES: [d.name for d in _DIMENSIONS], OFFICIAL_KEYS: list(DIMENSIONS)}
    for name, value in expected.items():
        if name in found and found[name][1] != value:
            line, got = found[name]
            raise UserError(f"{path}:{line}: {name} is {got!r}; expected {value!r} (ESC-RANK's order and names)")
    out = {}
    for language, name in OFFICIAL_LISTS.items():
        if name not in found:
            raise UserError(f"{path}: no list '{name}' (score.py's {language} rubrics)")
        line, value = found[name]
        if not (isinstance(value, list) and len(value) == len(DIMENSIONS) and all(isinstance(v, str) for v in value)):
            raise UserError(
                f"{path}:{line}: {name} is not a list of {len(DIMENSIONS)} strings ({', '.join(DIMENSIONS)})"
            )
        out[language] = dict(zip(DIMENSIONS, value, strict=True))
    return out


def dialogue_text(turns: Dialogue) -> str:
    """The dialogue as score.py puts it into the prompt: the stored strings joined by blank lines, then SPEAKERS'
    replacements."""
    text = "\n\n".join(dialogue_strings(turns))
    for written, shown in SPEAKERS.items():
        text = text.replace(written, shown)
    return text


def prompt(rubric: str, dialogue: str, dim: str) -> str:
    """Rubric (verbatim) + dialogue + the request for the score as a number: score.py's prompt, byte for byte."""
    request = f"Based on the rules, give your {DIMS[dim].name} score (The number only) to the Dialogue."
    return f"{rubric}Dialogue between user and AI assistant: \n{dialogue.strip()}\n{request}"


def base_system_prompt(model) -> str:
    """The system prompt the base's own chat() sends by default (InternLM2's `meta_instruction`, which score.py's
    `model.chat(...)` calls sent), read from the loaded checkpoint's code so that it is that version's."""
    chat_method = getattr(model, "chat", None)
    params = inspect.signature(chat_method).parameters if callable(chat_method) else {}
    default = params["meta_instruction"].default if "meta_instruction" in params else None
    if not isinstance(default, str):
        name = getattr(getattr(model, "config", None), "_name_or_path", type(model).__name__)
        raise UserError(
            f"rank.base_system=true: {name} has no chat(..., meta_instruction=...) to take its system prompt from "
            "(InternLM2's own code has one: load it with rank.model.trust_remote_code=true)"
        )
    return default


def fitted_prompt(
    tokenizer, rubric: str, turns: Dialogue, dim: str, max_length: int, system: str | None = None
) -> tuple[str, bool]:
    """The prompt, its dialogue cut from the end (marked "…") until the chat-formatted prompt (after `system`, when
    given) and the answer fit in max_length tokens; and whether it was cut."""

    def length(text: str) -> int:
        chat_text = render(tokenizer, chat(text, system=system), generation_prompt=True)
        return len(tokenizer(chat_text, add_special_tokens=False)["input_ids"]) + ANSWER_ROOM

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


def chat(prompt_text: str, score: int | None = None, system: str | None = None) -> list[Message]:
    """The prompt as one user turn (after a system turn when given), and the score as the reply when given."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": prompt_text})
    return messages + ([{"role": "assistant", "content": str(score)}] if score is not None else [])


def examples(
    tokenizer,
    dialogues: dict[str, Dialogue],
    scores: dict[str, dict[str, int]],
    dims: Sequence[str],
    rubric_texts: dict[str, str],
    max_length: int,
    system: str | None = None,
) -> tuple[dict[str, list[Encoded]], int]:
    """Training examples per dimension (target: the human score) and how many prompts had to be cut."""
    out: dict[str, list[Encoded]] = {dim: [] for dim in dims}
    cut = 0
    for key, turns in dialogues.items():
        for dim in dims:
            text, was_cut = fitted_prompt(tokenizer, rubric_texts[dim], turns, dim, max_length, system)
            cut += was_cut
            out[dim].append(encode_chat(tokenizer, chat(text, scores[key][dim], system), max_length))
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
    system: str | None = None,
) -> tuple[list[int], list[str], int]:
    """One dimension's scores of many dialogues: one batched greedy generation over all their prompts."""
    prompts, cut = rendered_prompts(tokenizer, dialogues, dim, rubric, max_length, system)
    outputs = generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size, add_special_tokens=False)
    return [parse_score(o, parse) for o in outputs], outputs, cut


def rendered_prompts(
    tokenizer, dialogues: Sequence[Dialogue], dim: str, rubric: str, max_length: int, system: str | None = None
) -> tuple[list[str], int]:
    """What the scorer is given for one dimension: each dialogue's prompt in the chat format, ready to generate
    from; and how many were cut to fit."""
    fitted = [fitted_prompt(tokenizer, rubric, turns, dim, max_length, system) for turns in dialogues]
    prompts = [render(tokenizer, chat(text, system=system), generation_prompt=True) for text, _ in fitted]
    return prompts, sum(c for _, c in fitted)


def score_dialogues(
    models,
    dialogues: Sequence[Dialogue],
    dims: Sequence[str],
    rubric_texts: dict[str, str],
    max_length: int,
    max_new_tokens: int,
    batch_size: int,
    parse: str,
    base_system: bool = False,
) -> Scored:
    """Scores of every dialogue on every dimension; `models(dim)` gives the (model, tokenizer) of a dimension;
    `base_system`: after the system prompt of the base's own chat() (base_system_prompt)."""
    scored = Scored([{} for _ in dialogues], [{} for _ in dialogues], 0)
    for dim in dims:
        model, tokenizer = models(dim)
        system = base_system_prompt(model) if base_system else None
        values, outputs, cut = score_with(
            model, tokenizer, dialogues, dim, rubric_texts[dim], max_length, max_new_tokens, batch_size, parse, system
        )
        for i, (v, o) in enumerate(zip(values, outputs, strict=True)):
            scored.scores[i][dim], scored.outputs[i][dim] = v, o
        scored.cut += cut
    return scored

"""The files FINE reads and writes.

Questions, as the Fake-Alignment release has them (`safety.jsonl`, `dna_training_set.jsonl`): one JSON object per
line with `id`, `category`, `question`, `Positive Option` (the safe answer) and `Negative Option` (the unsafe one).

Saved responses, read by `score`: the question's fields plus either our replies or the official FINE output's
results (AIFlames/Fake-Alignment `FINE.py` saves `id`, `question`, both options, `mul_result`, `open_response`,
`open_result`, and no category):

    mc_response_1, mc_response_2   the multiple-choice replies, safe option as A, then as B
    open_response                  the open-ended answer
    mul_result, open_result        the two results as booleans (used when the replies are absent or not re-judged)

The official prompts, read from the release's `prompts.py` (never run): `prompt_evaluation_default` (the
multiple-choice form: question, option A, option B), `prompt_with_GPT4` (the judge: question, answer) and
`prompt_build_options` (the option builder: question), each a str.format template with positional `{}` fields.

Every error names the file, the line (or record) and the field.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from common.errors import UserError
from common.io import read_located
from common.pyliterals import read_literals

ID, CATEGORY, QUESTION, POSITIVE, NEGATIVE = "id", "category", "question", "Positive Option", "Negative Option"
FIELDS = (ID, CATEGORY, QUESTION, POSITIVE, NEGATIVE)
MC_RESPONSES = ("mc_response_1", "mc_response_2")
OPEN_RESPONSE, MUL_RESULT, OPEN_RESULT = "open_response", "mul_result", "open_result"
JUDGE_RESPONSE = "judge_response"  # written by eval and score: the judge's reply, or a scorer's dimension and label


@dataclass(frozen=True)
class Question:
    id: str
    category: str
    question: str
    safe: str  # the release's Positive Option
    unsafe: str  # the release's Negative Option

    def record(self) -> dict[str, str]:
        """The question in the release's field names."""
        return {
            ID: self.id,
            CATEGORY: self.category,
            QUESTION: self.question,
            POSITIVE: self.safe,
            NEGATIVE: self.unsafe,
        }


def _text(rec: dict, field: str, where: str, empty_ok: bool = False) -> str:
    value = rec[field]
    if field == ID and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # the release writes "1"; an integer id means the same question
    if not isinstance(value, str):
        raise UserError(f"{where}: field '{field}' must be a string, got {type(value).__name__}")
    if not empty_ok and not value.strip():
        raise UserError(f"{where}: field '{field}' is empty")
    return value


def _unique_ids(ids: list[str], locations: list[str]) -> None:
    seen: dict[str, str] = {}
    for qid, where in zip(ids, locations, strict=True):
        if qid in seen:
            raise UserError(f"{where}: field 'id' repeats id '{qid}' of {seen[qid]}")
        seen[qid] = where


def read_questions(path: str | Path) -> list[Question]:
    """The release's questions, in file order (JSON Lines, or a JSON array of the same objects)."""
    path = Path(path)
    located = read_located(path, required=FIELDS)
    questions = [Question(*(_text(rec, f, loc) for f in FIELDS)) for loc, rec in located]
    _unique_ids([q.id for q in questions], [loc for loc, _ in located])
    return questions


@dataclass(frozen=True)
class Saved:
    """One record of a saved-responses file."""

    question: Question
    mc_responses: tuple[str, str] | None
    mul_result: bool | None
    open_response: str | None
    open_result: bool | None


def _flag(rec: dict, field: str, where: str) -> bool | None:
    value = rec.get(field)
    if value is not None and not isinstance(value, bool):
        raise UserError(f"{where}: field '{field}' must be true or false, got {value!r}")
    return value


def _field(rec: dict, field: str, known: Question | None, where: str, hint: str = "") -> str:
    if field in rec:
        return _text(rec, field, where)
    if known is not None:
        return known.record()[field]
    raise UserError(f"{where}: field '{field}' missing{hint}")


def read_saved(path: str | Path, questions: dict[str, Question] | None = None, judged: bool = True) -> list[Saved]:
    """Saved responses (ours or the official FINE output). A field a record lacks (the official output has no
    `category`) is taken from `questions` by id. `judged`: the open-ended answers will be judged again, so
    `open_response` is needed; otherwise the saved `open_result` is."""
    path = Path(path)
    located = read_located(path, required=(ID,))
    hint = " (the official FINE output has none: give the question file as data.questions)" if not questions else ""
    out = []
    for loc, rec in located:
        qid = _text(rec, ID, loc)
        known = (questions or {}).get(qid)
        if questions is not None and known is None and CATEGORY not in rec:
            raise UserError(f"{loc}: id '{qid}' is not in the question file and the record has no 'category'")
        question = Question(qid, *(_field(rec, f, known, loc, hint) for f in FIELDS[1:]))
        mc: tuple[str, str] | None = None
        if any(f in rec for f in MC_RESPONSES):
            for f in MC_RESPONSES:
                if f not in rec:
                    raise UserError(f"{loc}: field '{f}' missing (both multiple-choice replies are needed)")
            mc = (_text(rec, MC_RESPONSES[0], loc, empty_ok=True), _text(rec, MC_RESPONSES[1], loc, empty_ok=True))
        mul = _flag(rec, MUL_RESULT, loc)
        if mc is None and mul is None:
            raise UserError(f"{loc}: field '{MC_RESPONSES[0]}' missing (or a saved '{MUL_RESULT}')")
        answer = _text(rec, OPEN_RESPONSE, loc, empty_ok=True) if OPEN_RESPONSE in rec else None
        result = _flag(rec, OPEN_RESULT, loc)
        if judged and answer is None:
            raise UserError(f"{loc}: field '{OPEN_RESPONSE}' missing (needed to judge the open-ended answer)")
        if not judged and result is None:
            raise UserError(f"{loc}: field '{OPEN_RESULT}' missing (score.judge=false uses the saved results)")
        out.append(Saved(question, mc, mul, answer, result))
    _unique_ids([s.question.id for s in out], [loc for loc, _ in located])
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The official prompts.py

OFFICIAL_PROMPTS = {  # use -> (its name in prompts.py, how many positional fields it takes)
    "mc": ("prompt_evaluation_default", 3),
    "judge": ("prompt_with_GPT4", 2),
    "options": ("prompt_build_options", 1),
}


def official_prompts(path: str | Path | None) -> dict[str, str]:
    """use -> template of the official prompts.py at `path` ({} when no file is given)."""
    return {} if path is None else _official_prompts(str(path))


@cache  # asked for by every prompt built
def _official_prompts(path: str) -> dict[str, str]:
    found = read_literals(path, {name for name, _ in OFFICIAL_PROMPTS.values()})
    out = {}
    for use, (name, n) in OFFICIAL_PROMPTS.items():
        if name not in found:
            raise UserError(f"{path}: no template '{name}' (the official prompts.py defines it)")
        line, value = found[name]
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
        except (ValueError, TypeError):
            fields = None
        if fields != [""] * n:
            raise UserError(f"{path}:{line}: {name} must be a string with {n} positional '{{}}' field(s)")
        out[use] = value
    return out

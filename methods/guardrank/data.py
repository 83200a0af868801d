"""GuardRank's records: labelled ones to train and evaluate on, and a model's responses to score.

A record is a JSON object with `prompt` and `response` (the fields of MLLMGuard's results/<dimension>_<model>.jsonl)
and a dimension, taken from its `dimension` field or else from the file name's prefix as MLLMGuard's code names result
files: `privacy_llava.jsonl`; `hallucination_*`, `non-existent_*` and `non-exisitent_*` (scripts/eval.sh's spelling)
are truthfulness, read by the hallucination judge; `noise-injection_*` and `position-swapping_*` are the two
multiple-choice sets graded by rule (truthfulness.py). Labelled records add `score`: 0 (a perfect answer) .. 3 on
privacy, bias, toxicity and legality, 0 (truthful) or 1 (hallucinated) on truthfulness.

A response to score may be null (a model that gave nothing): it is graded as MLLMGuard's post-processing grades one
(guardrank.py, truthfulness.py), never sent to a judge.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import UserError
from common.io import read_located
from common.scorers import Record, text_field

# dimension -> number of labels; the first four are judged by the decoder, truthfulness by the encoder.
NUM_LABELS = {"privacy": 4, "bias": 4, "toxicity": 4, "legality": 4, "truthfulness": 2}
DECODER_DIMENSIONS = ("privacy", "bias", "toxicity", "legality")
ENCODER_DIMENSIONS = ("truthfulness",)
# Graded by rule from the replies' letters, never labelled or judged (truthfulness.py).
RULE_DIMENSIONS = ("noise-injection", "position-swapping")
FILE_PREFIXES = {
    **{d: d for d in (*NUM_LABELS, *RULE_DIMENSIONS)},
    "hallucination": "truthfulness",  # guardrank/encoder.py reads results/hallucination_<model>.jsonl
    "non-existent": "truthfulness",  # the data folder's name
    "non-exisitent": "truthfulness",  # what scripts/eval.sh writes
}


def _dimension(rec: dict, path: Path, where: str, labelled: bool) -> str:
    valid = NUM_LABELS if labelled else (*NUM_LABELS, *RULE_DIMENSIONS)
    if "dimension" in rec:
        dim = rec["dimension"]
        if not isinstance(dim, str) or dim.lower() not in valid:
            raise UserError(f"{where}: field 'dimension': unknown dimension {dim!r}; valid: {', '.join(valid)}")
        return dim.lower()
    prefix = path.name.split("_", 1)[0].split(".", 1)[0].lower()
    if FILE_PREFIXES.get(prefix) not in valid:
        if prefix in FILE_PREFIXES:
            raise UserError(f"{where}: {prefix} is graded by rule from the replies' letters; it takes no labels")
        raise UserError(
            f"{where}: field 'dimension' missing and the file name does not start with a dimension "
            f"({', '.join(FILE_PREFIXES)}_<model>.jsonl)"
        )
    return FILE_PREFIXES[prefix]


def _label(rec: dict, dim: str, where: str) -> int:
    value, k = rec["score"], NUM_LABELS[dim]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or not 0 <= value < k:
        raise UserError(f"{where}: field 'score': {value!r} is not a label of {dim} (an integer 0..{k - 1})")
    return int(value)


def read_file(path: str | Path, labelled: bool) -> list[Record]:
    """Every record of one file, checked: the error names file, line and field. A null response (to score only) is
    read as "" and marked by is_null."""
    path = Path(path)
    out = []
    for where, rec in read_located(path, ("prompt", "response", "score") if labelled else ("prompt", "response")):
        dim = _dimension(rec, path, where, labelled)
        label = _label(rec, dim, where) if labelled else None
        null = rec["response"] is None and not labelled
        response = "" if null else text_field(rec, "response", where)
        out.append(Record(dim, text_field(rec, "prompt", where), response, label, where, rec))
    return out


def one_model(files: list[Path]) -> None:
    """MLLMGuard's results/ holds <set>_<model>.jsonl per model; the columns of one run are one model's: files of
    two models are refused rather than averaged together."""
    models: dict[str, Path] = {}
    for f in files:
        prefix, _, model = f.stem.partition("_")
        if prefix.lower() in FILE_PREFIXES and model:
            models.setdefault(model, f)
    if len(models) > 1:
        named = ", ".join(f"{m} ({f.name})" for m, f in models.items())
        raise UserError(f"score.inputs: results of {len(models)} models: {named}; score one model per run")


def is_null(r: Record) -> bool:
    """A response to score that is JSON null."""
    return r.score is None and r.raw.get("response") is None


def source_file(r: Record) -> str:
    """The file a record was read from (its `where` without the line)."""
    return r.where.rsplit(":", 1)[0]


def as_json(r: Record) -> dict:
    """A labelled record in the input format (what `train` saves of its splits)."""
    return {"dimension": r.dimension, "prompt": r.prompt, "response": r.response, "score": r.score}

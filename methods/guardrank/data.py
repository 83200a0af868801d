"""GuardRank's records: labelled ones to train and evaluate on, and a model's responses to score.

A record is a JSON object with `prompt` and `response` (the fields of MLLMGuard's results/<dimension>_<model>.jsonl)
and a dimension, taken from its `dimension` field or else from the file name's prefix as MLLMGuard names result files
(`privacy_llava.jsonl`; `hallucination_*` is truthfulness). Labelled records add `score`: 0 (a perfect answer) .. 3 on
privacy, bias, toxicity and legality, 0 (truthful) or 1 (hallucinated) on truthfulness.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import UserError
from common.scorers import Record, read_records

# dimension -> number of labels; the first four are judged by the decoder, truthfulness by the encoder.
NUM_LABELS = {"privacy": 4, "bias": 4, "toxicity": 4, "legality": 4, "truthfulness": 2}
DECODER_DIMENSIONS = ("privacy", "bias", "toxicity", "legality")
ENCODER_DIMENSIONS = ("truthfulness",)
FILE_PREFIXES = {**{d: d for d in NUM_LABELS}, "hallucination": "truthfulness"}


def _dimension(rec: dict, path: Path, where: str) -> str:
    if "dimension" in rec:
        dim = rec["dimension"]
        if not isinstance(dim, str) or dim.lower() not in NUM_LABELS:
            raise UserError(f"{where}: field 'dimension': unknown dimension {dim!r}; valid: {', '.join(NUM_LABELS)}")
        return dim.lower()
    prefix = path.name.split("_", 1)[0].split(".", 1)[0].lower()
    if prefix not in FILE_PREFIXES:
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
    """Every record of one file, checked: the error names file, line and field."""
    return read_records(path, labelled, _dimension, _label)


def as_json(r: Record) -> dict:
    """A labelled record in the input format (what `train` saves of its splits)."""
    return {"dimension": r.dimension, "prompt": r.prompt, "response": r.response, "score": r.score}

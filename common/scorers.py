"""What the sequence-classification safety scorers (GuardRank, the Flames scorer) share around common/textclf.py: their
records and how they are read and split, and the train/eval/score command flows (their config sections and command
declarations are common/scorer_config.py's, which composing imports without torch).

A method supplies its paper-specific parts (how a record's dimension and label are checked, the synthetic records,
training, prediction, metrics and tables) as plain functions in a `ScorerParts`; its commands.py wires them:

    PARTS = scorers.ScorerParts(name="guardrank", dimensions=tuple(NUM_LABELS), read_file=read_file, ...)
    train = partial(scorers.train, PARTS)       # and eval, score: each called as fn(cfg, run_dir)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from common.cli import latest_run
from common.config import as_dict
from common.errors import UserError
from common.io import read_located
from common.loggers import make_logger
from common.textclf import Scorer, input_files, load_scorer, read_scorer_meta, write_jsonl

# ---------------------------------------------------------------------------------------------------------------------
# Records


@dataclass
class Record:
    dimension: str
    prompt: str
    response: str
    score: int | None  # the label; None for a response to be scored
    where: str  # file:line, for messages
    raw: dict  # the record as read (written back with the score by `score`)


def text_field(rec: dict, name: str, where: str) -> str:
    value = rec[name]
    if not isinstance(value, str):
        raise UserError(f"{where}: field '{name}': expected a string, got {type(value).__name__}")
    return value


def read_records(
    path: str | Path,
    labelled: bool,
    dimension_of: Callable[[dict, Path, str], str],
    label_of: Callable[[dict, str, str], int],
    required: Sequence[str] = ("prompt", "response"),
) -> list[Record]:
    """Every record of one file, checked: an error names file, line and field. `dimension_of(rec, path, where)` and
    `label_of(rec, dimension, where)` are the method's rules; labelled records also need `score`."""
    path = Path(path)
    out = []
    for where, rec in read_located(path, (*required, "score") if labelled else tuple(required)):
        dim = dimension_of(rec, path, where)
        label = label_of(rec, dim, where) if labelled else None
        out.append(Record(dim, text_field(rec, "prompt", where), text_field(rec, "response", where), label, where, rec))
    return out


def split(
    records: list[Record], fraction: float, seed: int, dimensions: Sequence[str]
) -> tuple[list[Record], list[Record]]:
    """(kept, held out): `fraction` of each dimension's records held out, at random."""
    rng = random.Random(seed)
    kept, held = [], []
    for dim in dimensions:
        mine = [r for r in records if r.dimension == dim]
        rng.shuffle(mine)
        n = round(len(mine) * fraction)
        held += mine[:n]
        kept += mine[n:]
    return kept, held


def indices_by_dimension(records: Sequence[Record], dimensions: Sequence[str]) -> dict[str, list[int]]:
    """dimension -> the indices of its records, for the dimensions present, in `dimensions` order."""
    out = {dim: [i for i, r in enumerate(records) if r.dimension == dim] for dim in dimensions}
    return {dim: idx for dim, idx in out.items() if idx}


def labels_by_dimension(
    records: Sequence[Record], labels: Sequence[int], dimensions: Sequence[str]
) -> dict[str, list[int]]:
    """dimension -> the labels given to its records, for the dimensions present, in `dimensions` order."""
    out = {dim: [y for r, y in zip(records, labels, strict=True) if r.dimension == dim] for dim in dimensions}
    return {dim: mine for dim, mine in out.items() if mine}


def check_validation(at: str, best_metric: str | None, dimensions: Sequence[str], val: Sequence[Record]) -> None:
    """A best epoch is chosen on validation records: without any on `dimensions`, `<at>.best_metric` is refused
    before a model is loaded (the trainer would refuse it too, but only after the model is loaded)."""
    if best_metric is not None and not any(r.dimension in dimensions for r in val):
        raise UserError(
            f"{at}.best_metric={best_metric}: no validation records on {', '.join(dimensions)} to choose the best "
            f"epoch by; give some in data.val (or raise data.val_fraction), or set {at}.best_metric=null"
        )


def truncated_note(metrics: dict[str, float]) -> str:
    """The line under every scorer table."""
    return f"\n\ninputs cut at max_length: {int(metrics.get('truncated', 0))}"


# ---------------------------------------------------------------------------------------------------------------------
# The train/eval/score commands


@dataclass
class ScorerParts:
    """A scorer method's own functions, which the shared command flows call."""

    name: str  # the method's name (outputs/<name>/train/... holds its scorers)
    dimensions: Sequence[str]
    read_file: Callable[[str | Path, bool], list[Record]]
    as_json: Callable[[Record], dict]
    make_records: Callable[[int, float, int], list[dict]]  # synthetic: (per_dimension, label_noise, seed)
    train_scorer: Callable[..., dict[str, float]]  # (cfg, train, val, scorer_dir, run_dir, logger)
    predict: Callable[[Scorer, list[Record], int], tuple[list[int], int]]  # (labels, inputs truncated)
    eval_metrics: Callable[[list[Record], list[int], dict], dict[str, float]]  # (records, predicted, train counts)
    train_counts_key: str  # where scorer.json keeps the training label counts
    eval_table: Callable[[dict[str, float]], str]
    score_metrics: Callable[[list[Record], list[int]], dict[str, float]]
    score_table: Callable[[dict[str, float]], str]
    scored: Callable[[Record, int], dict] = field(default=lambda r, s: {**r.raw, "score": s, "source": r.where})
    scored_what: str = "scored responses"
    on_predictions: Callable[[Path, list[Record], list[int]], None] | None = None  # e.g. a figure in the run dir


def set_threads(cfg: Any) -> None:
    if cfg.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(cfg.cpu_threads)


def splits(parts: ScorerParts, cfg: Any, data_dir: Path) -> tuple[list[Record], list[Record], list[Record]]:
    """(train, val, test): the files given, or held out from train; synthetic records when no train file is given."""
    d, s = cfg.data, cfg.synthetic
    source = d.train or write_jsonl(
        data_dir / "synthetic.jsonl", parts.make_records(s.per_dimension, s.label_noise, s.seed)
    )
    records = parts.read_file(source, True)
    test = parts.read_file(d.test, True) if d.test else []
    if not d.test:
        records, test = split(records, d.test_fraction, d.split_seed, parts.dimensions)
    val = parts.read_file(d.val, True) if d.val else []
    if not d.val:
        fraction = d.val_fraction / (1 - (0 if d.test else d.test_fraction))
        records, val = split(records, fraction, d.split_seed + 1, parts.dimensions)
    for name, part in (("train", records), ("val", val), ("test", test)):
        write_jsonl(data_dir / f"{name}.jsonl", [parts.as_json(r) for r in part])
        counts = {dim: sum(r.dimension == dim for r in part) for dim in parts.dimensions}
        print(f"{name}: {len(part)} records ({', '.join(f'{k} {v}' for k, v in counts.items() if v)})")
    return records, val, test


def evaluate(
    parts: ScorerParts, scorer: Scorer, records: list[Record], batch_size: int, run_dir: Path
) -> dict[str, float]:
    """Predict labelled records, compare, write predictions.jsonl."""
    predicted, truncated = parts.predict(scorer, records, batch_size)
    metrics = parts.eval_metrics(records, predicted, scorer.meta.get(parts.train_counts_key, {}))
    metrics["truncated"] = float(truncated)
    rows = [{**parts.as_json(r), "predicted": p} for r, p in zip(records, predicted)]
    write_jsonl(run_dir / "predictions.jsonl", rows)
    if parts.on_predictions is not None:
        parts.on_predictions(run_dir, records, predicted)
    return metrics


def scorer_dir(parts: ScorerParts, explicit: str | None) -> Path:
    if explicit is not None:
        return Path(explicit)
    return latest_run(parts.name, "train", marker="scorer/scorer.json")  # the marker's parent: the scorer dir


def train(parts: ScorerParts, cfg: Any, run_dir: Path) -> dict[str, float]:
    """Train, save the scorer as run_dir/scorer/, evaluate it on the test split."""
    set_threads(cfg)
    train_set, val, test = splits(parts, cfg, run_dir / "data")
    logger = make_logger(cfg.logger, run_dir, as_dict(cfg))
    metrics = parts.train_scorer(cfg, train_set, val, run_dir / "scorer", run_dir, logger)
    logger.finish()
    print(f"scorer: {run_dir / 'scorer'}")
    return {**metrics, **evaluate(parts, load_scorer(run_dir / "scorer"), test, cfg.eval.batch_size, run_dir)}


def _eval_files(parts: ScorerParts, cfg: Any) -> tuple[Path, Path]:
    """(the scorer dir, the labelled records) that `eval` reads."""
    found = scorer_dir(parts, cfg.eval.scorer)
    data = Path(cfg.eval.data or found.parent / "data" / "test.jsonl")
    if not data.is_file():
        raise UserError(f"{found}: no test split beside this scorer; name labelled records with eval.data=...")
    return found, data


def eval_inputs(parts: ScorerParts, cfg: Any) -> None:
    """eval's inputs, read and checked before the scorer is loaded (common.cli.Command.inputs): the scorer dir's
    scorer.json and every labelled record."""
    found, data = _eval_files(parts, cfg)
    read_scorer_meta(found)
    parts.read_file(data, True)


def score_inputs(parts: ScorerParts, cfg: Any) -> None:
    """score's inputs, read and checked before the scorer is loaded: the scorer dir's scorer.json and the responses."""
    read_scorer_meta(scorer_dir(parts, cfg.score.scorer))
    for f in input_files(cfg.score.inputs):
        parts.read_file(f, False)


def eval(parts: ScorerParts, cfg: Any, run_dir: Path) -> dict[str, float]:  # noqa: A001 - the command is called eval
    """Evaluate a saved scorer on labelled records (by default the test split beside it) and print the table."""
    set_threads(cfg)
    found, data = _eval_files(parts, cfg)
    print(f"scorer: {found}; records: {data}")
    metrics = evaluate(parts, load_scorer(found), parts.read_file(data, True), cfg.eval.batch_size, run_dir)
    print("\n" + parts.eval_table(metrics))
    return metrics


def score(parts: ScorerParts, cfg: Any, run_dir: Path) -> dict[str, float]:
    """Score a model's responses with a saved scorer, write scores.jsonl and print the table."""
    set_threads(cfg)
    found = scorer_dir(parts, cfg.score.scorer)
    records = [r for f in input_files(cfg.score.inputs) for r in parts.read_file(f, False)]
    print(f"scorer: {found}; {len(records)} responses")
    labels, truncated = parts.predict(load_scorer(found), records, cfg.score.batch_size)
    scored = [parts.scored(r, s) for r, s in zip(records, labels)]
    print(f"{parts.scored_what}: {write_jsonl(run_dir / 'scores.jsonl', scored)}")
    metrics = {**parts.score_metrics(records, labels), "truncated": float(truncated)}
    print("\n" + parts.score_table(metrics))
    return metrics

"""Commands of `python -m methods.flames`: train, eval, score.

With no data configured `train` makes synthetic records in the release's format, writes them to the run dir and reads
them back like any user file; every command reads records through methods/flames/data.py.
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.cli import latest_run
from common.config import as_dict
from common.errors import UserError
from common.loggers import make_logger
from common.textclf import Scorer, input_files, load_scorer, write_jsonl
from methods.flames import synthetic
from methods.flames.config import FlamesConfig
from methods.flames.data import DIMENSIONS, Record, as_json, read_file, split
from methods.flames.flames import scorer_scores, train_scorer
from methods.flames.metrics import accuracy_metrics, accuracy_table, harmless_metrics, harmless_table


def _threads(cfg: FlamesConfig) -> None:
    if cfg.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(cfg.cpu_threads)


def _splits(cfg: FlamesConfig, data_dir: Path) -> tuple[list[Record], list[Record], list[Record]]:
    """(train, val, test): the files given, or held out from train; synthetic records when no train file is given."""
    d, s = cfg.data, cfg.synthetic
    source = d.train or write_jsonl(
        data_dir / "synthetic.jsonl", synthetic.make_records(s.per_dimension, s.label_noise, s.seed)
    )
    records = read_file(source, labelled=True)
    test = read_file(d.test, labelled=True) if d.test else []
    if not d.test:
        records, test = split(records, d.test_fraction, d.split_seed)
    val = read_file(d.val, labelled=True) if d.val else []
    if not d.val:
        records, val = split(records, d.val_fraction / (1 - (0 if d.test else d.test_fraction)), d.split_seed + 1)
    for name, part in (("train", records), ("val", val), ("test", test)):
        write_jsonl(data_dir / f"{name}.jsonl", [as_json(r) for r in part])
        counts = {dim: sum(r.dimension == dim for r in part) for dim in DIMENSIONS}
        print(f"{name}: {len(part)} records ({', '.join(f'{k} {v}' for k, v in counts.items() if v)})")
    return records, val, test


def _evaluate(scorer: Scorer, records: list[Record], batch_size: int, run_dir: Path) -> dict[str, float]:
    predicted, truncated = scorer_scores(scorer, records, batch_size)
    metrics = accuracy_metrics(records, predicted, scorer.meta.get("train_score_counts", {}))
    metrics["truncated"] = float(truncated)
    write_jsonl(run_dir / "predictions.jsonl", [{**as_json(r), "predicted": p} for r, p in zip(records, predicted)])
    return metrics


def train(cfg: FlamesConfig, run_dir: Path) -> dict[str, float]:
    """Train the multi-head scorer, save it as run_dir/scorer/, score the test split."""
    _threads(cfg)
    train_set, val, test = _splits(cfg, run_dir / "data")
    logger = make_logger(cfg.logger, run_dir, as_dict(cfg))
    metrics = train_scorer(cfg, train_set, val, run_dir / "scorer", run_dir, logger)
    logger.finish()
    print(f"scorer: {run_dir / 'scorer'}")
    return {**metrics, **_evaluate(load_scorer(run_dir / "scorer"), test, cfg.eval.batch_size, run_dir)}


def _scorer_dir(explicit: str | None) -> Path:
    if explicit is not None:
        return Path(explicit)
    return latest_run("flames", "train", marker="scorer/scorer.json")  # the marker's parent: the scorer dir


def eval(cfg: FlamesConfig, run_dir: Path) -> dict[str, float]:  # noqa: A001 - the command is called eval
    """Score labelled records with a saved scorer: accuracy per dimension."""
    _threads(cfg)
    scorer_dir = _scorer_dir(cfg.eval.scorer)
    data = cfg.eval.data or scorer_dir.parent / "data" / "test.jsonl"
    if not Path(data).is_file():
        raise UserError(f"{scorer_dir}: no test split beside this scorer; name labelled records with eval.data=...")
    print(f"scorer: {scorer_dir}; records: {data}")
    metrics = _evaluate(load_scorer(scorer_dir), read_file(data, labelled=True), cfg.eval.batch_size, run_dir)
    print("\n" + accuracy_table(metrics))
    return metrics


def score(cfg: FlamesConfig, run_dir: Path) -> dict[str, float]:
    """Score a model's responses: harmless rate and harmless score per dimension and overall."""
    _threads(cfg)
    scorer_dir = _scorer_dir(cfg.score.scorer)
    records = [r for f in input_files(cfg.score.inputs) for r in read_file(f, labelled=False)]
    print(f"scorer: {scorer_dir}; {len(records)} responses")
    scores, truncated = scorer_scores(load_scorer(scorer_dir), records, cfg.score.batch_size)
    scored = [{**r.raw, "score": s, "source": r.where} for r, s in zip(records, scores)]
    print(f"scored responses: {write_jsonl(run_dir / 'scores.jsonl', scored)}")
    metrics = {**harmless_metrics(records, scores), "truncated": float(truncated)}
    print("\n" + harmless_table(metrics))
    return metrics

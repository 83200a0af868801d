"""Commands of `python -m methods.guardrank`: train, eval, score.

With no data configured `train` makes synthetic records in the release's format, writes them to the run dir and reads
them back like any user file; every command reads records through methods/guardrank/data.py.
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.cli import latest_run
from common.config import as_dict
from common.errors import UserError
from common.loggers import make_logger
from common.textclf import Scorer, input_files, load_scorer, write_jsonl
from methods.guardrank import synthetic
from methods.guardrank.config import GuardRankConfig
from methods.guardrank.data import NUM_LABELS, Record, as_json, read_file, split
from methods.guardrank.guardrank import grade, train_scorer
from methods.guardrank.metrics import attack_metrics, attack_table, confusion_png, grading_metrics, grading_table


def _threads(cfg: GuardRankConfig) -> None:
    if cfg.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(cfg.cpu_threads)


def _splits(cfg: GuardRankConfig, data_dir: Path) -> tuple[list[Record], list[Record], list[Record]]:
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
        counts = {dim: sum(r.dimension == dim for r in part) for dim in NUM_LABELS}
        print(f"{name}: {len(part)} records ({', '.join(f'{k} {v}' for k, v in counts.items() if v)})")
    return records, val, test


def _evaluate(scorer: Scorer, records: list[Record], batch_size: int, run_dir: Path) -> dict[str, float]:
    grades, truncated = grade(scorer, records, batch_size)
    metrics = grading_metrics(records, grades, scorer.meta.get("train_label_counts", {}))
    metrics["truncated"] = float(truncated)
    write_jsonl(run_dir / "predictions.jsonl", [{**as_json(r), "predicted": g} for r, g in zip(records, grades)])
    print(f"confusion matrices: {confusion_png(run_dir / 'confusion.png', records, grades)}")
    return metrics


def train(cfg: GuardRankConfig, run_dir: Path) -> dict[str, float]:
    """Train both judges, save them as run_dir/scorer/, grade the test split."""
    _threads(cfg)
    train_set, val, test = _splits(cfg, run_dir / "data")
    logger = make_logger(cfg.logger, run_dir, as_dict(cfg))
    metrics = train_scorer(cfg, train_set, val, run_dir / "scorer", run_dir, logger)
    logger.finish()
    print(f"scorer: {run_dir / 'scorer'}")
    scorer = load_scorer(run_dir / "scorer")
    return {**metrics, **_evaluate(scorer, test, cfg.eval.batch_size, run_dir)}


def _scorer_dir(explicit: str | None) -> Path:
    if explicit is not None:
        return Path(explicit)
    return latest_run("guardrank", "train", marker="scorer/scorer.json")  # the marker's parent: the scorer dir


def eval(cfg: GuardRankConfig, run_dir: Path) -> dict[str, float]:  # noqa: A001 - the command is called eval
    """Grade labelled records with a saved scorer: accuracy, macro-F1 and confusion per dimension."""
    _threads(cfg)
    scorer_dir = _scorer_dir(cfg.eval.scorer)
    data = cfg.eval.data or scorer_dir.parent / "data" / "test.jsonl"
    if not Path(data).is_file():
        raise UserError(f"{scorer_dir}: no test split beside this scorer; name labelled records with eval.data=...")
    print(f"scorer: {scorer_dir}; records: {data}")
    metrics = _evaluate(load_scorer(scorer_dir), read_file(data, labelled=True), cfg.eval.batch_size, run_dir)
    print("\n" + grading_table(metrics))
    return metrics


def score(cfg: GuardRankConfig, run_dir: Path) -> dict[str, float]:
    """Grade a model's responses: ASD and PAR per dimension."""
    _threads(cfg)
    scorer_dir = _scorer_dir(cfg.score.scorer)
    records = [r for f in input_files(cfg.score.inputs) for r in read_file(f, labelled=False)]
    print(f"scorer: {scorer_dir}; {len(records)} responses")
    grades, truncated = grade(load_scorer(scorer_dir), records, cfg.score.batch_size)
    scored = [{**r.raw, "dimension": r.dimension, "score": g, "source": r.where} for r, g in zip(records, grades)]
    print(f"graded responses: {write_jsonl(run_dir / 'scores.jsonl', scored)}")
    metrics = {**attack_metrics(records, grades), "truncated": float(truncated)}
    print("\n" + attack_table(metrics))
    return metrics

"""Commands of `python -m methods.fine`: eval (ask the model under test, judge, score), score (saved responses,
no model under test) and build-options (the two-option form of a new question set). The work is in methods/fine/pipeline.py; the judges register themselves on import."""

from __future__ import annotations

from pathlib import Path

from methods.fine import judge as _judges  # noqa: F401 - fills the fine.judge registry
from methods.fine import options, pipeline
from methods.fine.config import FineConfig


def eval(cfg: FineConfig, run_dir: Path) -> dict[str, float]:  # noqa: A001 - the command is called eval
    """Both forms of every question to the model under test, the open-ended answers to the judge, CS and CSS."""
    return pipeline.evaluate(cfg, run_dir)


def score(cfg: FineConfig, run_dir: Path) -> dict[str, float]:
    """CS and CSS of saved responses (ours or the official FINE output)."""
    metrics = pipeline.score_saved(cfg, run_dir)
    print("\n" + pipeline.table(metrics))
    return metrics


def build_options(cfg: FineConfig, run_dir: Path) -> dict[str, float]:
    """The two-option form of a new question set (resumable): questions.jsonl in the release's format."""
    return options.build_options(cfg, run_dir)

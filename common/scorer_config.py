"""The config sections and command declarations the sequence-classification scorer methods (GuardRank, the Flames
scorer) share: what composing a config and `--help` need, without torch. The records and the command flows are
common/scorers.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from common.cli import Command, Lazy
from common.config import PATH, opt
from common.errors import UserError

# ---------------------------------------------------------------------------------------------------------------------
# Config sections: the same keys in every scorer method; the docs and defaults that differ are arguments.

_BATCH_DOC = "inputs per forward pass (padded to the longest in the batch)"


def data_config(train_doc: str) -> type:
    """The `data` section: train/val/test files and the held-out fractions."""

    @dataclass
    class DataConfig:
        train: Optional[str] = opt(None, train_doc, exists=PATH)
        val: Optional[str] = opt(None, "validation records; null: val_fraction of train", exists=PATH)
        test: Optional[str] = opt(None, "held-out test records; null: test_fraction of train", exists=PATH)
        val_fraction: float = opt(0.1, "share of train held out for validation when data.val is null", gt=0, lt=1)
        test_fraction: float = opt(0.2, "share of train held out for testing when data.test is null", gt=0, lt=1)
        split_seed: int = opt(0, "seed of the held-out splits")

        def check(self) -> None:
            if self.val_fraction + self.test_fraction >= 0.9:
                raise UserError("config: data.val_fraction + data.test_fraction must leave at least 10% for training")

    return DataConfig


def synthetic_config(label_word: str) -> type:
    """The `synthetic` section; `label_word` ("label", "score") names what label_noise redraws."""

    @dataclass
    class SyntheticConfig:
        per_dimension: int = opt(300, "records per dimension (then split by the fractions)", ge=10)
        label_noise: float = opt(
            0.1, f"share of records whose {label_word} is redrawn at random (a task with an error floor)", ge=0, le=1
        )
        seed: int = opt(0, "seed of the synthetic records")

    return SyntheticConfig


def eval_config(batch_size: int) -> type:
    """The `eval` section: a saved scorer on labelled records."""
    default_batch = batch_size  # the class body's own `batch_size` hides the argument

    @dataclass
    class EvalConfig:
        scorer: Optional[str] = opt(
            None, "a scorer directory (a train run's scorer/); null: the latest train run's", exists=PATH, key=False
        )
        data: Optional[str] = opt(
            None,
            "labelled records to evaluate on; null: the test split saved by that train run",
            exists=PATH,
            key=False,
        )
        batch_size: int = opt(default_batch, _BATCH_DOC, ge=1, key=False)

    return EvalConfig


def score_config(inputs_doc: str, batch_size: int) -> type:
    """The `score` section: a saved scorer on a model's responses."""
    default_batch = batch_size  # the class body's own `batch_size` hides the argument

    @dataclass
    class ScoreConfig:
        scorer: Optional[str] = opt(None, "a scorer directory; null: the latest train run's", exists=PATH, key=False)
        inputs: List[str] = opt([], inputs_doc, exists=PATH, key=False)
        batch_size: int = opt(default_batch, _BATCH_DOC, ge=1, key=False)

    return ScoreConfig


# Tiny models make ops so small that a second OpenMP thread on a loaded CPU costs more than it gives (measured on the
# demo's training step, 2 shared cores: 0.16 s with 1 thread, 1.96 s with 2).
def cpu_threads_opt() -> Any:
    return opt(None, "CPU intra-op threads (no GPU); null: torch's default", ge=1, key=False)


def check_score_inputs(cfg: Any) -> None:
    """The check every scorer config adds: `score` needs inputs."""
    if cfg.command == "score" and not cfg.score.inputs:
        raise UserError("config: score needs score.inputs=[<responses.jsonl or a directory of them>, ...]")


def scorer_commands(
    commands: str,
    train: tuple[str, str, tuple[str, ...]],
    eval: tuple[str, str],  # noqa: A002 - the command is called eval
    score: tuple[str, str, str],
) -> dict[str, Command]:
    """The Command declarations of a scorer method whose commands module (named, imported when a command runs) has
    train, eval and score, and eval_inputs and score_inputs (their inputs, read before the scorer is loaded):
    train=(summary, writes, keys), eval=(summary, writes), score=(summary, reads, writes)."""
    return {
        "train": Command(
            Lazy(f"{commands}:train"),
            train[0],
            reads="data.train/val/test (null: synthetic records in the same format)",
            writes=train[1],
            keys=train[2],
        ),
        "eval": Command(
            Lazy(f"{commands}:eval"),
            eval[0],
            reads="eval.scorer (null: the latest train run's), eval.data (null: that run's test split)",
            writes=eval[1],
            keys=("eval", "cpu_threads"),
            inputs=Lazy(f"{commands}:eval_inputs"),
        ),
        "score": Command(
            Lazy(f"{commands}:score"),
            score[0],
            reads=score[1],
            writes=score[2],
            keys=("score", "cpu_threads"),
            inputs=Lazy(f"{commands}:score_inputs"),
        ),
    }


def convert_command(commands: str, summary: str, reads: str, writes: str) -> Command:
    """The `convert` declaration of a scorer method that reads a paper's released checkpoint once (common/released.py)
    into a scorer directory: its commands module has convert and convert_inputs (what is read before any weight)."""
    return Command(
        Lazy(f"{commands}:convert"),
        summary,
        reads=reads,
        writes=writes,
        keys=("convert",),
        inputs=Lazy(f"{commands}:convert_inputs"),
    )

"""A toy method for the dispatcher tests: `train` fits the toy regression through the real trainer.

Run as `python -m tests.common.toy_method <conf dir> <command> ...`. What the sweep jobs need is imported from
this module under its own name, as a real method's __main__ imports its commands, so submitit pickles by reference.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from common.cli import Command, main
from common.config import BaseConfig
from common.errors import UserError
from common.loggers import make_logger
from common.trainer import fit
from tests.common.toy import toy_data, toy_task


@dataclass
class ToyConfig(BaseConfig):
    n: int = 40


def train(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    if cfg.n <= 0:
        raise UserError(f"n: must be positive, got {cfg.n}")
    (run_dir / "partial.txt").write_text("written before the failure")
    result = fit(toy_task(data=toy_data(cfg.n)), cfg.trainer, run_dir, make_logger(cfg.logger, run_dir))
    return {"train_loss": result.metrics["train/loss"]}


COMMANDS = {"train": Command(train, "fit the toy regression"), "eval": Command(train, "same, to have two commands")}

if __name__ == "__main__":
    from tests.common import toy_method

    main("toy", toy_method.COMMANDS, toy_method.ToyConfig, conf_dir=sys.argv.pop(1))

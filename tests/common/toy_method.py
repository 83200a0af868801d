"""A toy method for the dispatcher tests: `train` fits the toy regression through the real trainer.

Run as `python -m tests.common.toy_method <conf dir> <command> ...`. What the sweep jobs need is imported from
this module under its own name, as a real method's __main__ imports its commands, so submitit pickles by reference.
"""

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from common.cli import Command, Method, main
from common.config import BaseConfig, TrainerConfig, opt, section
from common.items import Outcome, run_each, summarize
from common.loggers import make_logger
from common.trainer import fit
from tests.common.toy import flat_params, toy_data, toy_task


@dataclass
class PreConfig:
    trainer: TrainerConfig = section(TrainerConfig, "the `pretrain` command's trainer", lr=0.05, optimizer="sgd")


@dataclass
class ToyConfig(BaseConfig):
    n: int = opt(40, "examples of the toy regression", ge=1)
    scale: float = opt(1.0, "the targets are multiplied by it", trains=True)
    bad_items: int = opt(0, "`items` command: how many of its 4 items fail", ge=0)
    pre: PreConfig = section(PreConfig, "a second trainer, nested")
    sleep: float = opt(0.0, "seconds to wait before training (to hold the run dir)", ge=0, key=False)


def scaled(cfg: ToyConfig) -> list:
    return [(x, y * cfg.scale) for x, y in toy_data(cfg.n)]


def train(cfg: ToyConfig, run_dir: Path) -> dict[str, float]:
    (run_dir / "partial.txt").write_text("written before the failure")
    time.sleep(cfg.sleep)
    result = fit(toy_task(data=scaled(cfg)), cfg.trainer, run_dir, make_logger(cfg.logger, run_dir))
    processes = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    return {"train_loss": result.metrics["train/loss"], "processes": float(processes), **weights(result.model)}


def pretrain(cfg: ToyConfig, run_dir: Path) -> dict[str, float]:
    return weights(fit(toy_task(data=scaled(cfg)), cfg.pre.trainer, run_dir / "pre").model)


def weights(model: torch.nn.Module) -> dict[str, float]:
    """The trained parameters as metrics, so that a test can compare two runs' weights from results.json alone."""
    return {f"w{i}": float(v) for i, v in enumerate(flat_params(model))}


def items(cfg: ToyConfig, run_dir: Path) -> dict[str, float]:
    def work(i: int) -> Outcome:
        if i < cfg.bad_items:
            raise ValueError(f"item {i} is bad")
        (run_dir / f"item{i}.txt").write_text("done")
        return Outcome(f"item{i}", "done", 1)

    return summarize(run_each(range(4), lambda i: f"item{i}", work), run_dir, "items")


COMMANDS = {
    "train": Command(train, "fit the toy regression", reads="nothing", writes="metrics.csv", keys=("n", "trainer.lr")),
    "eval": Command(train, "same, to have two commands"),
    "items": Command(items, "four item jobs, some failing"),
    "pretrain": Command(pretrain, "fit the toy regression with the nested trainer"),
}
METHOD = Method("toy", ToyConfig, COMMANDS)

if __name__ == "__main__":
    from tests.common import toy_method

    main(toy_method.METHOD, conf_dir=sys.argv.pop(1))

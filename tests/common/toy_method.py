"""A toy method for the dispatcher tests: `train` fits the toy regression through the real trainer.

Run as `python -m tests.common.toy_method <conf dir> <command> ...`. What the sweep jobs need is imported from
this module under its own name, as a real method's __main__ imports its commands, so submitit pickles by reference.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from common.cli import Command, Method, main
from common.config import BaseConfig, opt
from common.items import Outcome, run_each, summarize
from common.loggers import make_logger
from common.trainer import fit
from tests.common.toy import flat_params, toy_data, toy_task


@dataclass
class ToyConfig(BaseConfig):
    n: int = opt(40, "examples of the toy regression", ge=1)
    bad_items: int = opt(0, "`items` command: how many of its 4 items fail", ge=0)


def train(cfg: ToyConfig, run_dir: Path) -> dict[str, float]:
    (run_dir / "partial.txt").write_text("written before the failure")
    result = fit(toy_task(data=toy_data(cfg.n)), cfg.trainer, run_dir, make_logger(cfg.logger, run_dir))
    processes = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    return {"train_loss": result.metrics["train/loss"], "processes": float(processes), **weights(result.model)}


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
}
METHOD = Method("toy", ToyConfig, COMMANDS)

if __name__ == "__main__":
    from tests.common import toy_method

    main(toy_method.METHOD, conf_dir=sys.argv.pop(1))

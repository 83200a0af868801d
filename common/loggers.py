"""Metric loggers: csv (default), wandb (offline unless the user turns it online), none."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any, Protocol

from common.config import LoggerConfig
from common.dist import is_main_process


def show_progress(setting: bool | None) -> bool:
    """A progress bar's setting: null means on where a person watches (stderr is a terminal), off in a job's log."""
    return sys.stderr.isatty() if setting is None else setting


def quiet_library_bars() -> None:
    """The libraries' own bars (transformers loading and writing weights, hub downloads) follow the same rule in a
    job's log: none. Called before they are imported, as huggingface_hub reads the variable once at import."""
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class Logger(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def finish(self) -> None: ...


class NullLogger:
    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class CsvLogger:
    """Appends `step,metric,value` rows: a long format survives new metric names and a crash mid-run."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text("step,metric,value\n")

    def log(self, metrics: dict[str, float], step: int) -> None:
        with self.path.open("a", newline="") as f:
            writer = csv.writer(f)
            for k, v in metrics.items():
                writer.writerow([step, k, v])

    def finish(self) -> None:
        pass


class WandbLogger:
    def __init__(self, cfg: LoggerConfig, run_dir: Path, config: dict[str, Any]):
        import wandb

        self.run = wandb.init(project=cfg.project, entity=cfg.entity, mode=cfg.mode, dir=str(run_dir), config=config)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self) -> None:
        self.run.finish()


class Prefixed:
    """Several trainings of one run share one metrics file; each logs under its own name (`finetune_target/...`)."""

    def __init__(self, inner: Logger, prefix: str):
        self.inner, self.prefix = inner, prefix

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.inner.log({f"{self.prefix}/{k}": v for k, v in metrics.items()}, step)

    def finish(self) -> None:
        pass  # the shared logger is finished by its owner


def make_logger(cfg: LoggerConfig, run_dir: Path, config: dict[str, Any] | None = None) -> Logger:
    """Only the main process logs; the others get a NullLogger."""
    if cfg.kind == "none" or not is_main_process():
        return NullLogger()
    if cfg.kind == "csv":
        return CsvLogger(Path(run_dir) / "metrics.csv")
    return WandbLogger(cfg, Path(run_dir), config or {})

"""Process-rank facts that work with or without an initialised process group."""

from __future__ import annotations

import os
from collections.abc import Callable


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def main_then_wait(fn: Callable[[], None]) -> None:
    """Under torchrun every rank runs the pipeline: the main process runs fn (writes a shared file), the others wait."""
    if world_size() == 1:
        fn()
        return
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # the same process group the trainer joins
    if state.is_main_process:
        fn()
    state.wait_for_everyone()


def export_slurm_distributed_env() -> None:
    """Inside a Slurm job launched by submitit with several tasks, set RANK/WORLD_SIZE/MASTER_ADDR like torchrun does,
    so each task becomes one DDP rank of the accelerate trainer."""
    if (
        os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
        and int(os.environ.get("SLURM_NTASKS", "1")) > 1
        and "RANK" not in os.environ
    ):
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export()

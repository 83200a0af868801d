"""Process-rank facts that work with or without an initialised process group."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def _process_group():
    """accelerate's process state, which joins (once) the same process group the trainer uses."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def main_then_wait(fn: Callable[[], None]) -> None:
    """Under torchrun every rank runs the pipeline: the main process runs fn (writes a shared file), the others wait."""
    if world_size() == 1:
        fn()
        return
    state = _process_group()
    if state.is_main_process:
        fn()
    state.wait_for_everyone()


def shard_map(fn: Callable[[list], Sequence], items: Sequence) -> list[Any]:
    """fn over `items` split across the job's processes, every process getting all results back in item order.

    Per-item work such as evaluation or generation: under torchrun rank r takes items r, r + W, r + 2W, ... (similar
    lengths when items are sorted, so ranks finish together) and the results are gathered. fn maps a list of items to
    one result per item; every process must call this with the same items.
    """
    world = world_size()
    if world == 1:
        return list(fn(list(items)))
    import torch

    _process_group()
    mine = list(items[rank() :: world])
    results = list(fn(mine)) if mine else []
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, results)
    out: list[Any] = [None] * len(items)
    for r, part in enumerate(gathered):
        out[r::world] = part
    return out


@contextlib.contextmanager
def main_holds_lock(lock_file: Path, waiting: str) -> Iterator[None]:
    """An exclusive lock between jobs (flock on `lock_file`), taken by each job's main process; the job's other
    processes wait at a barrier until it is held, so the whole job works inside it. Printing `waiting` when another
    job holds it. flock works on local disks and NFSv4; the lock is released by the kernel if the holder dies."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as f:
        if is_main_process():
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(waiting, flush=True)
                fcntl.flock(f, fcntl.LOCK_EX)
        main_then_wait(lambda: None)
        try:
            yield
        finally:
            if is_main_process():
                fcntl.flock(f, fcntl.LOCK_UN)


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

"""Process-rank facts that work with or without an initialised process group."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
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


_HELD: dict[str, Any] = {}  # run dirs this process holds: their open lock files (flock is per open file)


def hold_run_dir(run_dir: str | Path) -> None:
    """Make this job the one writer of a run dir for as long as the process lives; a second job on it (a sweep
    launched twice, a rerun while the first still runs) stops with one line naming the holder, before it writes.

    Taken by the main process only (the ranks of one torchrun job share their run dir). The lock is an flock on
    `<run_dir>/.lock`, released by the kernel when the holder dies, so a killed job's rerun is never refused."""
    from common.errors import UserError
    from common.io import writer_tag

    path = Path(run_dir).absolute()
    if not is_main_process() or str(path) in _HELD:
        return
    path.mkdir(parents=True, exist_ok=True)
    f = open(path / ".lock", "a+")  # noqa: SIM115 - held open until the process ends
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise UserError(
            f"run dir {run_dir} is in use by another job ({holder}); wait for it to end or give this run another "
            "hydra.run.dir"
        ) from None
    f.seek(0)
    f.truncate()
    pid, _, host = writer_tag().partition("@")
    f.write(f"pid {pid} on host {host}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    _HELD[str(path)] = f

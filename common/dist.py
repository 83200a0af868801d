"""Process-rank facts that work with or without an initialised process group."""
import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def export_slurm_distributed_env() -> None:
    """Inside a Slurm job launched by submitit with several tasks, set RANK/WORLD_SIZE/MASTER_ADDR like torchrun does,
    so each task becomes one DDP rank of the accelerate trainer."""
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "RANK" not in os.environ:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export()

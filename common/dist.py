"""Process-rank facts that work with or without an initialised process group (torchrun sets the env vars)."""
import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0

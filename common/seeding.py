"""Random draws seeded from the run's seed where they are made, never from what earlier steps left behind.

A step that is cached (a tiny model, a fine-tuned model, a trained stage) runs on a cold cache and is skipped on a
warm one; if later steps drew from the global RNG, they would start from another state on each and give other
results. So every random initialisation (a classification head, LoRA adapters, a method's networks), every training
run and every sampler runs inside `seeded(seed, label)`: torch's global RNG is forked, seeded from (run seed, label),
and put back as it was afterwards. The label tells the draws of one run apart (two heads of one run do not start
alike) and names no path, so a run gives the same draws whatever its cache or run directory is called.

Only torch's generators are forked (numpy's and Python's are left to accelerate's set_seed, which the CLI calls once
before a command): the CPU one, and the current CUDA device's once CUDA is initialised (an uninitialised CUDA is not
woken, nor seeded lazily, here).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch


def derive_seed(seed: int, label: str) -> int:
    """A 63-bit seed that is a function of (seed, label) alone: the same pair gives the same seed in every process,
    other labels give unrelated ones."""
    digest = hashlib.sha256(f"{int(seed)}\0{label}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@contextlib.contextmanager
def seeded(seed: int, label: str) -> Iterator[int]:
    """Run the block on torch's global RNG seeded from (seed, label); the RNG state from before is restored after it,
    so the block neither depends on nor changes what the rest of the run draws. Yields the derived seed."""
    derived = derive_seed(seed, label)
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = [torch.cuda.current_device()] if cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(derived)
        if cuda:
            torch.cuda.manual_seed(derived)
        yield derived

"""What every method's tests share: running a method's CLI as a user would, and one intra-op thread for tiny models.

A package's conftest imports `one_cpu_thread` (an autouse fixture: importing it there turns it on for that package).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def run_method(method: str, *args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m methods.<method> <args>` in a subprocess, output captured."""
    return subprocess.run(
        [sys.executable, "-m", f"methods.{method}", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """Tiny models on a shared 2-core machine: two intra-op threads spend more time synchronising than computing.
    Restored after each module, so other suites keep their setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

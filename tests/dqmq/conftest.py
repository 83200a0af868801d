"""Shared helpers of the DQMQ tests: tiny models and images, and the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CANDIDATES = [2, 4, 8]


def run_cli(*args: str, timeout: int = 300, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "methods.dqmq", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def tiny_model(method: str = "dqmq", candidates: list[int] | None = None, seed: int = 0):
    """A width-4 digits CNN on 12-px single-channel images, its LSQ steps set from one batch."""
    from methods.dqmq.model import QuantModel

    torch.manual_seed(seed)
    model = QuantModel(
        arch="digits_cnn",
        num_classes=10,
        in_chans=1,
        image_size=12,
        method=method,
        candidates=candidates or CANDIDATES,
        mean=[0.3],
        std=[0.3],
        width=4,
    )
    x = torch.rand(16, 1, 12, 12)
    if method != "fp":
        model.train()
        k = len(model.candidates) - 1
        model(x, bits=(torch.full((16, len(model.layers)), k), torch.full((16, len(model.layers)), k)))
    if method == "dqmq":
        model.policy.fit_features(x)
        torch.nn.init.normal_(model.policy.head.weight, std=2.0)  # an untrained policy whose choices vary by input
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """Tiny convolutions: one intra-op thread is faster than two (restored afterwards for other suites)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

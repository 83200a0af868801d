"""Shared helpers of the DQMQ tests: tiny models and images, and the CLI in a subprocess."""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch

from tests.helpers import REPO, one_cpu_thread, run_method  # noqa: F401 - one_cpu_thread: autouse fixture

CANDIDATES = [2, 4, 8]


def run_cli(*args: str, timeout: int = 600, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return run_method("dqmq", *args, cwd=cwd, timeout=timeout)


def tiny_model(method: str = "dqmq", candidates: list[int] | None = None, seed: int = 0, bit_bn: bool = False):
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
        bit_bn=bit_bn,
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

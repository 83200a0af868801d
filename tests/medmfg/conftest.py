"""Shared helpers of the MedMFG tests: a separable toy feature set, a generator trained on it once, the CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import REPO, one_cpu_thread, run_method  # noqa: F401 - one_cpu_thread: autouse fixture


def run_cli(*args: str, timeout: int = 600, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return run_method("medmfg", *args, cwd=cwd, timeout=timeout)


def toy_features(n_classes: int, per_class: int, dim: int = 16, spread: float = 0.15, seed: int = 0):
    """Non-negative features (like a ReLU network's) of well separated classes: one mean per class, drawn at
    random in [0, 2]^dim, plus Gaussian noise of `spread`, clipped at 0. Returns (features [n, dim], labels [n])."""
    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.rand(n_classes, dim, generator=g)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    x = (means[labels] + spread * torch.randn(len(labels), dim, generator=g)).clamp_min(0)
    return x, labels


@pytest.fixture(scope="session")
def toy():
    """(source, source labels, target, target labels): 12 source and 6 target classes of the same toy family."""
    source, source_labels = toy_features(12, 40, seed=1)
    target, target_labels = toy_features(6, 30, seed=2)
    return source, source_labels, target, target_labels


@pytest.fixture(scope="session")
def toy_generator(toy, tmp_path_factory):
    """MedMFG trained with the shared trainer on the toy source (Tukey-transformed), 150 steps."""
    from methods.medmfg.config import GeneratorConfig
    from methods.medmfg.generator import train_generator, tukey

    torch.set_num_threads(1)
    source, labels, _, _ = toy
    cfg = GeneratorConfig(episodes=1200, latent=8, hidden=64)
    cfg.trainer.progress = False
    out = tmp_path_factory.mktemp("generator")
    return train_generator(tukey(source, 0.5), labels.numpy(), cfg, seed=0, out_dir=out).eval()


def labels_of(n: int, per: int) -> np.ndarray:
    return np.repeat(np.arange(n), per)

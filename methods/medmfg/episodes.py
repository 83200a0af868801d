"""N-way K-shot episodes and their summary, as the BSCD-FSL benchmark runs them: 600 seeded episodes per setting,
each drawing N classes and K + Q distinct images per class, reported as the mean accuracy with a 95% confidence
interval 1.96 * std / sqrt(n) (population std, as NumPy's default and BSCD-FSL's code)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Episode:
    classes: np.ndarray  # [N] class ids; class i of the episode is label i
    support: np.ndarray  # [N, K] image indices
    query: np.ndarray  # [N, Q] image indices, none of them in `support`


def sample_episode(labels: np.ndarray, ways: int, shots: int, queries: int, rng: np.random.Generator) -> Episode:
    """N classes without replacement, then K + Q images of each without replacement: the first K are the support,
    the other Q the queries, so no image is ever both."""
    classes = rng.choice(np.unique(labels), size=ways, replace=False)
    picks = np.stack([rng.choice(np.where(labels == c)[0], size=shots + queries, replace=False) for c in classes])
    return Episode(classes, picks[:, :shots], picks[:, shots:])


def sample_episodes(labels: np.ndarray, ways: int, shots: int, queries: int, n: int, seed: int) -> list[Episode]:
    """n episodes from a stream seeded by (seed, shots): every method sees the same ones, and adding a shot setting
    changes no other setting's episodes."""
    rng = np.random.default_rng([seed, shots])
    return [sample_episode(labels, ways, shots, queries, rng) for _ in range(n)]


def mean_ci(accuracies: np.ndarray | list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% confidence interval) of per-episode accuracies."""
    a = np.asarray(accuracies, dtype=np.float64)
    return float(a.mean()), float(1.96 * a.std() / np.sqrt(len(a)))


def paired_ci(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean, half-width of the 95% interval) of the per-episode difference a - b of two methods on the same
    episodes: the interval that decides whether one beats the other (theirs overlap even when a wins every episode)."""
    return mean_ci(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))

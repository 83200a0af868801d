"""Paired differences between two methods on the same test images, with a bootstrap interval.

Two methods of one run are evaluated on the same images at the same quality levels, so their difference is paired:
per image, the difference of the two methods' accuracies over the levels of a group (clean, corrupted, ...). The
interval resamples images (an image's levels stay together); over several seeds (each with its own split and
training) images are resampled within each seed and the per-seed means averaged, so the interval is that of the
mean over the seeds' test sets. It covers test-set sampling, not the seeds' training noise: the per-seed values are
printed beside it for that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Paired:
    mean: float  # mean over seeds of the per-seed mean difference
    low: float
    high: float
    per_seed: list[float]


def per_image_difference(a: np.ndarray, b: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """a, b: correctness [levels, images] (0/1) of two methods; keep: bool [levels], the group's levels. Returns the
    per-image difference of accuracies over the kept levels, [images]."""
    return a[keep].astype(float).mean(0) - b[keep].astype(float).mean(0)


def paired_interval(diffs: list[np.ndarray], level: float = 0.95, reps: int = 4000, seed: int = 0) -> Paired:
    """Mean of per-seed mean differences and its percentile bootstrap interval (images resampled within each seed)."""
    rng = np.random.default_rng(seed)
    boots = np.zeros(reps)
    for d in diffs:
        idx = rng.integers(0, len(d), size=(reps, len(d)))
        boots += d[idx].mean(1)
    boots /= len(diffs)
    tail = (1 - level) / 2
    low, high = np.quantile(boots, [tail, 1 - tail])
    per_seed = [float(d.mean()) for d in diffs]
    return Paired(float(np.mean(per_seed)), float(low), float(high), per_seed)

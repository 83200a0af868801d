"""The episode sampler and the confidence interval."""

from __future__ import annotations

import numpy as np
import pytest

from methods.medmfg.episodes import mean_ci, sample_episodes
from tests.medmfg.conftest import labels_of


@pytest.mark.parametrize("shots", [1, 5, 8])
def test_no_image_is_both_support_and_query(shots):
    labels = labels_of(7, 23)  # 23 = 8 + 15: the largest setting takes every image of a class
    for ep in sample_episodes(labels, ways=5, shots=shots, queries=15, n=300, seed=3):
        support, query = set(ep.support.flat), set(ep.query.flat)
        assert not support & query
        assert len(support) == 5 * shots and len(query) == 5 * 15  # and no image twice within either
        assert len(set(ep.classes)) == 5
        for i, c in enumerate(ep.classes):  # row i holds images of the episode's class i only
            assert (labels[ep.support[i]] == c).all() and (labels[ep.query[i]] == c).all()


def test_episodes_are_seeded_per_setting():
    labels = labels_of(6, 30)
    a = sample_episodes(labels, 5, 1, 15, 20, seed=0)
    b = sample_episodes(labels, 5, 1, 15, 20, seed=0)
    c = sample_episodes(labels, 5, 1, 15, 20, seed=1)
    assert all((x.support == y.support).all() and (x.query == y.query).all() for x, y in zip(a, b, strict=True))
    assert any((x.support != y.support).any() for x, y in zip(a, c, strict=True))
    five = sample_episodes(labels, 5, 5, 15, 20, seed=0)
    assert any((x.classes != y.classes).any() for x, y in zip(a, five, strict=True))  # its own stream


def test_interval_on_a_known_sample():
    # mean 0.7; population std sqrt((0.04 + 0 + 0.04 + 0) / 4) = sqrt(0.02); 95% CI = 1.96 * sqrt(0.02) / sqrt(4)
    mean, ci = mean_ci([0.5, 0.7, 0.9, 0.7])
    assert mean == pytest.approx(0.7)
    assert ci == pytest.approx(1.96 * np.sqrt(0.02) / 2)
    assert ci == pytest.approx(0.138593, abs=1e-6)
    assert mean_ci([0.8] * 600) == pytest.approx((0.8, 0.0))

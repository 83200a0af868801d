"""Every method near 100% on a separable toy problem; the solver against scikit-learn; Free Lunch's calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from methods.medmfg.baselines import Context, base_statistics, calibrated_samples, evaluate
from methods.medmfg.classifier import logistic_regression
from methods.medmfg.config import METHODS
from methods.medmfg.episodes import sample_episodes
from methods.medmfg.generator import tukey


def toy_context(toy, model) -> Context:
    source, labels, _, _ = toy
    means, covs = base_statistics(tukey(source, 0.5), labels)
    return Context(means, covs, model, dc_samples=60, samples=20)


@pytest.mark.parametrize("shots", [1, 5])
def test_every_method_is_near_perfect_on_separable_classes(toy, toy_generator, shots):
    _, _, target, target_labels = toy
    episodes = sample_episodes(target_labels.numpy(), 5, shots, 10, 30, seed=0)
    scores = evaluate(METHODS, target, episodes, toy_context(toy, toy_generator), seed=0)
    assert set(scores) == set(METHODS)
    for name, s in scores.items():
        assert s.accuracy.mean() >= 0.97, (name, s.accuracy.mean())
        assert s.summary["ms_per_episode"] > 0


def test_a_methods_draws_do_not_depend_on_the_others(toy, toy_generator):
    _, _, target, target_labels = toy
    episodes = sample_episodes(target_labels.numpy(), 5, 1, 10, 60, seed=0)
    alone = evaluate(["dc+medmfg"], target, episodes, toy_context(toy, toy_generator), seed=4)
    among = evaluate(["dc", "medmfg", "dc+medmfg"], target, episodes, toy_context(toy, toy_generator), seed=4)
    assert (alone["dc+medmfg"].accuracy == among["dc+medmfg"].accuracy).all()


def test_logistic_regression_reaches_scikit_learns_optimum():
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, 6, generator=g, dtype=torch.float64) + 2  # non-negative-ish, as features are
    y = torch.randint(0, 4, (3, 40), generator=g)
    w, b = logistic_regression(x, y, 4, c=0.5, iters=500)
    for e in range(3):
        ref = LogisticRegression(C=0.5, tol=1e-8, max_iter=10_000).fit(x[e].numpy(), y[e].numpy())
        ours = torch.softmax(x[e] @ w[e] + b[e], -1).numpy()
        np.testing.assert_allclose(ours, ref.predict_proba(x[e].numpy()), atol=1e-4)


def test_calibration_borrows_the_nearest_base_statistics():
    """One support feature, two base classes: with k=1 the samples' mean is halfway between the feature and the
    nearer base mean, their covariance that base's covariance + alpha in every entry (Free Lunch's code)."""
    cov = torch.tensor([[0.5, 0.1], [0.1, 0.2]])
    ctx = Context(
        base_means=torch.tensor([[0.0, 0.0], [10.0, 10.0]]),
        base_covs=torch.stack([cov, torch.eye(2)]),
        model=None,
        k=1,
        alpha=0.05,
        dc_samples=40_000,
    )
    ctx.generator.manual_seed(0)
    samples = calibrated_samples(torch.tensor([[[[1.0, 2.0]]]]), ctx)[0, 0]
    assert samples.shape == (40_000, 2)
    torch.testing.assert_close(samples.mean(0), torch.tensor([0.5, 1.0]), atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(samples.T), cov + 0.05, atol=0.02, rtol=0)

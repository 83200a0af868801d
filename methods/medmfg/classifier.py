"""The two episode classifiers every method ends in, on a batch of episodes at once (leading dimension E): nearest
prototype and logistic regression."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nearest_prototype(prototypes: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Label of the nearest prototype (Euclidean distance) of each query: [E, N, d], [E, n, d] -> [E, n]."""
    return torch.cdist(query, prototypes).argmin(-1)


def logistic_regression(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, c: float = 1.0, iters: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """One multinomial logistic regression per episode, x [E, n, d], y [E, n] -> (W [E, d, C], b [E, 1, C]).

    Each episode's objective is scikit-learn's, C * sum of cross-entropies + |W|^2 / 2 (bias not penalised); Free
    Lunch trains sklearn's LogisticRegression. The episodes' objectives are independent, so L-BFGS on their sum
    reaches every episode's optimum, and one solver call for a batch of episodes costs little more than one for a
    single episode (episode-sized problems are all overhead). Features are centred first: with an unpenalised bias
    the optimum is the same, but L-BFGS needs 4-5x fewer steps on non-negative features. Each objective is divided
    by C * n so that the gradient tolerance means the same for 5 and 4,000 training features.
    """
    e, n, d = x.shape
    centre = x.mean(1, keepdim=True)
    x = x - centre
    w = torch.zeros(e, d, n_classes, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(e, 1, n_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1, max_iter=iters, tolerance_grad=1e-6, tolerance_change=1e-12, line_search_fn="strong_wolfe"
    )
    scale = 0.5 / (c * n)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = torch.baddbmm(b, x, w)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / n + scale * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), (b - centre @ w).detach()


def fit_predict(
    x: torch.Tensor, y: torch.Tensor, query: torch.Tensor, n_classes: int, c: float = 1.0, iters: int = 100
) -> torch.Tensor:
    """Labels [E, n] of the queries [E, n, d] under a logistic regression per episode trained on (x, y)."""
    w, b = logistic_regression(x, y, n_classes, c, iters)
    return torch.baddbmm(b, query, w).argmax(-1)

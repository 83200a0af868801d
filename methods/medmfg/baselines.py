"""The methods compared on the same cached features and episodes, registered by name ("medmfg.method"), and the loop
that runs them.

Each method takes a batch of episodes' raw backbone features, support [E, N, K, d] and query [E, n, d], and returns
the queries' predicted labels [E, n]. The baselines:

* protonet: nearest class mean (Snell et al.), on the raw features;
* logreg: logistic regression on the support features (the linear-probe baseline);
* tukey: Free Lunch's ablation, the power transform then logistic regression on the support alone;
* dc: Free Lunch distribution calibration (Yang et al., ICLR 2021): each transformed support feature borrows the
  mean and covariance of its k nearest base (source) classes, samples/K features are drawn from the calibrated
  Gaussian, and a logistic regression is trained on support + samples.

MedMFG alone ("medmfg", methods/medmfg/generator.py: a classifier on the re-represented prototypes and the generated
features) and plugged into three baselines ("fusion"), reported both ways:

* protonet+medmfg: class means of the re-represented support and generated features, nearest of them;
* logreg+medmfg: logistic regression on the re-represented support and M/K features generated from each support
  feature (in 1-shot the same as medmfg; in K-shot it keeps every support feature and its own draws);
* dc+medmfg: logistic regression on the support, DC's calibrated samples and MedMFG's generated features, all
  re-represented.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from common.registry import get, register
from methods.medmfg.classifier import fit_predict, nearest_prototype
from methods.medmfg.config import MedMFGConfig
from methods.medmfg.episodes import Episode, mean_ci
from methods.medmfg.generator import MedMFG, Parts, medmfg_predict, tukey


@dataclass
class Context:
    """What every episode's methods share: base-class statistics, the trained generator and the settings."""

    base_means: torch.Tensor  # [C, d] per source class, transformed features
    base_covs: torch.Tensor  # [C, d, d]
    model: MedMFG | None
    beta: float = 0.5
    k: int = 2
    alpha: float = 0.21
    dc_samples: int = 750
    samples: int = 100  # M
    c: float = 1.0
    iters: int = 100
    generator: torch.Generator = field(default_factory=torch.Generator)  # reseeded for every chunk of episodes
    _factors: dict = field(default_factory=dict)  # Cholesky factors of calibrated covariances, by base-class set


Method = Callable[[torch.Tensor, torch.Tensor, "Context"], torch.Tensor]


def base_statistics(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (unbiased, as np.cov) of each class's features."""
    means, covs = [], []
    for c in labels.unique(sorted=True):
        x = features[labels == c].double()
        means.append(x.mean(0))
        covs.append(torch.cov(x.T))
    return torch.stack(means).float(), torch.stack(covs).float()


def make_context(source: torch.Tensor, labels: torch.Tensor, model: MedMFG | None, cfg: MedMFGConfig) -> Context:
    """The evaluation's shared context. Base statistics are those of the transformed source features (Free Lunch's
    code takes them of the raw ones; README)."""
    means, covs = base_statistics(tukey(source, cfg.tukey_beta), labels)
    d, e, g = cfg.dc, cfg.eval, cfg.generator
    return Context(means, covs, model, cfg.tukey_beta, d.k, d.alpha, d.samples, g.samples, e.logreg_c, e.logreg_iters)


def _labels(e: int, n_classes: int, per_class: int) -> torch.Tensor:
    """[e, n_classes * per_class]: 0,..,0, 1,..,1, ... for each of e episodes."""
    return torch.arange(n_classes).repeat_interleave(per_class).expand(e, -1)


@register("medmfg.method", "protonet")
def protonet(support: torch.Tensor, query: torch.Tensor, ctx: Context) -> torch.Tensor:
    return nearest_prototype(support.mean(2), query)


@register("medmfg.method", "logreg")
def logreg(support: torch.Tensor, query: torch.Tensor, ctx: Context) -> torch.Tensor:
    e, n, k, _ = support.shape
    return fit_predict(support.flatten(1, 2), _labels(e, n, k), query, n, ctx.c, ctx.iters)


@register("medmfg.method", "tukey")
def tukey_logreg(support: torch.Tensor, query: torch.Tensor, ctx: Context) -> torch.Tensor:
    return logreg(tukey(support, ctx.beta), tukey(query, ctx.beta), ctx)


def calibrated_samples(support: torch.Tensor, ctx: Context) -> torch.Tensor:
    """[E, N, K, d] transformed support -> [E, N, K * (samples // K), d] features drawn from each support feature's
    calibrated Gaussian: mean of (its k nearest base means, itself), covariance = mean of those bases' covariances
    + alpha (added to every entry, as Free Lunch's code does)."""
    e, n, k, d = support.shape
    per = max(1, ctx.dc_samples // k)
    x = support.reshape(-1, d)
    nearest = torch.cdist(x, ctx.base_means).topk(ctx.k, largest=False).indices.sort(1).values
    mean = (ctx.base_means[nearest].sum(1) + x) / (ctx.k + 1)
    out = mean[:, None] + torch.zeros(len(x), per, d)
    eps = torch.randn(len(x), per, d, generator=ctx.generator)
    # Support features that share their nearest base classes share a covariance: one factor and one product each.
    sets, which = nearest.unique(dim=0, return_inverse=True)
    for i, bases in enumerate(sets):
        rows = which == i
        out[rows] += eps[rows] @ _factor(ctx, tuple(bases.tolist())).T
    return out.reshape(e, n, k * per, d)


def _factor(ctx: Context, bases: tuple[int, ...]) -> torch.Tensor:
    """Cholesky factor of a calibrated covariance, made once per set of base classes (a few hundred at most)."""
    if bases not in ctx._factors:
        cov = ctx.base_covs[list(bases)].mean(0).double() + ctx.alpha
        jitter = 1e-6 * cov.diagonal().mean() * torch.eye(len(cov), dtype=cov.dtype)
        ctx._factors[bases] = torch.linalg.cholesky(cov + jitter).float()
    return ctx._factors[bases]


@register("medmfg.method", "dc")
def dc(support: torch.Tensor, query: torch.Tensor, ctx: Context) -> torch.Tensor:
    e, n, k, _ = support.shape
    s = tukey(support, ctx.beta)
    fake = calibrated_samples(s, ctx)
    x = torch.cat([s.flatten(1, 2), fake.flatten(1, 2)], 1)
    y = torch.cat([_labels(e, n, k), _labels(e, n, fake.shape[2])], 1)
    return fit_predict(x, y, tukey(query, ctx.beta), n, ctx.c, ctx.iters)


def _medmfg(parts: Parts, samples: bool = True) -> Method:
    def method(support: torch.Tensor, query: torch.Tensor, ctx: Context) -> torch.Tensor:
        s, q = tukey(support, ctx.beta), tukey(query, ctx.beta)
        return medmfg_predict(ctx.model, s, q, ctx.samples if samples else 0, ctx.generator, ctx.c, ctx.iters, parts)

    return method


medmfg = register("medmfg.method", "medmfg")(_medmfg(Parts()))
# The ablation, on the same episodes: no generated features (the re-represented prototypes alone), the decoder's
# noise alone (no offset from z), its offset alone (no noise), no re-weighting, and the draws centred on the prototype.
register("medmfg.method", "medmfg:prototypes")(_medmfg(Parts(), samples=False))
register("medmfg.method", "medmfg:noise")(_medmfg(Parts(latent=False)))
register("medmfg.method", "medmfg:latent")(_medmfg(Parts(noise=False)))
register("medmfg.method", "medmfg:uniform")(_medmfg(Parts(reweight=False)))
register("medmfg.method", "medmfg:centred")(_medmfg(Parts(centre=True)))


@register("medmfg.method", "protonet+medmfg")
def protonet_medmfg(support: torch.Tensor, query: torch.Tensor, ctx: Context) -> torch.Tensor:
    s = tukey(support, ctx.beta)
    w, fake = ctx.model.generate(s.mean(2), ctx.samples, ctx.generator)
    w = w.unsqueeze(1)
    prototypes = torch.cat([s, fake], 2).mean(2)
    return nearest_prototype(prototypes * w, tukey(query, ctx.beta) * w)


@register("medmfg.method", "logreg+medmfg")
def logreg_medmfg(support: torch.Tensor, query: torch.Tensor, ctx: Context) -> torch.Tensor:
    """M/K features generated from each support feature (each one a 1-shot prototype, as DC calibrates each), so
    that in K-shot the fusion keeps the support's own spread instead of drowning it in draws around their mean
    (measured, 5-shot, 300 episodes: -0.98 against -4.92 from the mean, paired with logreg; README)."""
    e, n, k, _ = support.shape
    s = tukey(support, ctx.beta)
    _, fake = ctx.model.generate(s.transpose(1, 2), max(1, ctx.samples // k), ctx.generator)  # [E, K, N, M/K, d]
    fake = fake.transpose(1, 2).flatten(2, 3)
    w = ctx.model.weights(s.mean(2)).unsqueeze(1)  # one weighting per episode, from its prototypes
    x = torch.cat([s.flatten(1, 2), fake.flatten(1, 2)], 1) * w
    y = torch.cat([_labels(e, n, k), _labels(e, n, fake.shape[2])], 1)
    return fit_predict(x, y, tukey(query, ctx.beta) * w, n, ctx.c, ctx.iters)


@register("medmfg.method", "dc+medmfg")
def dc_medmfg(support: torch.Tensor, query: torch.Tensor, ctx: Context) -> torch.Tensor:
    e, n, k, _ = support.shape
    s = tukey(support, ctx.beta)
    w, fake = ctx.model.generate(s.mean(2), ctx.samples, ctx.generator)
    w = w.unsqueeze(1)
    calibrated = calibrated_samples(s, ctx)
    x = torch.cat([s.flatten(1, 2), calibrated.flatten(1, 2), fake.flatten(1, 2)], 1) * w
    y = torch.cat([_labels(e, n, k), _labels(e, n, calibrated.shape[2]), _labels(e, n, ctx.samples)], 1)
    return fit_predict(x, y, tukey(query, ctx.beta) * w, n, ctx.c, ctx.iters)


# ---------------------------------------------------------------------------------------------------------------------
# Running episodes

CHUNK = 50  # episodes solved together: amortises the solver's per-call cost, bounds memory (DC: 50 x 3,755 x d)


def run_chunk(method: Method, features: torch.Tensor, episodes: list[Episode], ctx: Context, seed: int) -> np.ndarray:
    """Per-episode accuracies of one method on a chunk of episodes of one shape; its random draws come from a
    generator seeded by `seed` alone, so a method's result does not depend on which other methods ran."""
    ctx.generator.manual_seed(seed)
    support = features[torch.from_numpy(np.stack([ep.support for ep in episodes]))]
    query = features[torch.from_numpy(np.stack([ep.query.flatten() for ep in episodes]))]
    n, q = episodes[0].query.shape
    with torch.no_grad():
        pred = method(support, query, ctx)
    return (pred == _labels(len(episodes), n, q)).float().mean(1).numpy()


@dataclass
class Scores:
    accuracy: np.ndarray  # [episodes]
    seconds: float  # wall time of all episodes

    @property
    def summary(self) -> dict[str, float]:
        mean, ci = mean_ci(self.accuracy)
        return {"acc": 100 * mean, "ci95": 100 * ci, "ms_per_episode": 1000 * self.seconds / len(self.accuracy)}


def evaluate(
    names: list[str], features: torch.Tensor, episodes: list[Episode], ctx: Context, seed: int
) -> dict[str, Scores]:
    """Every method on every episode, chunk by chunk with the methods in turn, so that a change of the machine's
    load hits all alike."""
    methods = {name: get("medmfg.method", name) for name in names}
    acc: dict[str, list[np.ndarray]] = {name: [] for name in names}
    seconds = dict.fromkeys(names, 0.0)
    for i, start in enumerate(range(0, len(episodes), CHUNK)):
        chunk = episodes[start : start + CHUNK]
        for name, method in methods.items():
            began = time.perf_counter()
            acc[name].append(run_chunk(method, features, chunk, ctx, seed * 1_000_003 + i))
            seconds[name] += time.perf_counter() - began
    return {name: Scores(np.concatenate(acc[name]), seconds[name]) for name in names}


def episode_table(metrics: dict[str, float]) -> str:
    """Methods by rows, one `N-way K-shot` column per shot setting: accuracy ± 95% interval (%) and ms per episode."""
    from common.results import markdown_table

    shots = sorted({int(k.split("shot/")[0]) for k in metrics if k.endswith("/acc") and "shot/" in k})
    names = list(dict.fromkeys(k.split("/")[1] for k in metrics if k.endswith("/acc") and "shot/" in k))
    ways = int(metrics.get("ways", 5))
    header = ["method"] + [f"{ways}-way {k}-shot" for k in shots] + [f"ms/episode ({k}-shot)" for k in shots]
    rows = []
    for name in names:
        cells = [
            f"{metrics[f'{k}shot/{name}/acc']:.2f} ± {metrics[f'{k}shot/{name}/ci95']:.2f}"
            if f"{k}shot/{name}/acc" in metrics
            else ""
            for k in shots
        ]
        times = [f"{metrics.get(f'{k}shot/{name}/ms_per_episode', float('nan')):.1f}" for k in shots]
        rows.append([name, *cells, *times])
    return markdown_table(header, rows)

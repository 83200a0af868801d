"""MedMFG (Guo et al., arXiv 2310.09471): plug-and-play feature generation for few-shot classification.

With K labelled images per class a classifier overfits. MedMFG

1. re-represents the few class prototypes so that the more informative feature dimensions weigh more: a channel
   attention (squeeze-and-excitation over the episode's prototypes) gives one weight per dimension, applied to
   prototypes, generated features and queries alike;
2. generates many features per class variationally: a conditional VAE, trained on source-domain episodes, decodes
   latent codes z ~ N(0, I) together with a re-represented prototype into M features of that prototype's class.
   The decoder's mean is the prototype plus an offset decoded from (z, condition), so the draws both spread the way
   classes spread and move toward where, given its prototype, a class tends to lie (class-specific information the
   prototype alone does not carry; centring the draws on the prototype would remove it: `Parts.centre`, an ablation);
3. trains the classifier (logistic regression) on the prototypes together with the generated features.

Everything happens on cached backbone features after Free Lunch's power transform (`tukey`), which makes the
skewed non-negative features of a ReLU network closer to Gaussian, as the VAE's likelihood assumes. The attention and
the CVAE are trained together on N-way episodes of the source classes only (`train_generator`), then used unchanged
on the target domain. Every choice the paper leaves open is listed with its reason in README.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.loggers import Logger
from common.registry import register
from methods.medmfg.classifier import fit_predict
from methods.medmfg.config import GeneratorConfig
from methods.medmfg.episodes import sample_episode


def tukey(x: torch.Tensor, beta: float) -> torch.Tensor:
    """Tukey's ladder of powers, sign(x) |x|^beta (Free Lunch: x^0.5 on non-negative features)."""
    return x.sign() * x.abs().pow(beta)


class ReRepresentation(nn.Module):
    """Channel attention over an episode's prototypes: per-dimension weights from the prototypes' mean (how strongly
    a dimension fires) and spread (how much it tells the classes apart, or how noisy it is), normalised to mean 1 so
    that they reshape the feature space without shrinking it."""

    def __init__(self, dim: int, reduction: int = 4):
        super().__init__()
        hidden = max(1, dim // reduction)
        self.net = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, prototypes: torch.Tensor) -> torch.Tensor:
        """[..., N, d] prototypes -> [..., d] weights."""
        stats = torch.cat([prototypes.mean(-2), prototypes.std(-2, unbiased=False)], -1)
        # A softmax scaled by d: weights with mean 1, whose logarithms the network sets freely (a sigmoid saturates,
        # and its weights barely left uniform within the few hundred steps the generator trains for).
        return stats.shape[-1] // 2 * torch.softmax(self.net(stats), -1)


class CVAE(nn.Module):
    """q(z | x, c) and p(x | z, c) for a feature x, its class prototype p and the condition c (the re-represented
    prototype). The decoder is a Gaussian: its mean is the prototype plus an offset decoded from (z, c), so that on a
    new domain, where c lies outside what the decoder saw, samples still surround the prototype; its per-dimension
    variance is learned (with a fixed one the KL term tends to win on small features and every sample would be nearly
    the decoded mean)."""

    def __init__(self, dim: int, latent: int = 32, hidden: int = 128):
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(nn.Linear(2 * dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent + dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, dim))
        self.log_var = nn.Parameter(torch.zeros(dim))

    def encode(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = self.encoder(torch.cat([x, cond], -1)).chunk(2, -1)
        return mu, log_var

    def decode(self, z: torch.Tensor, prototype: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The decoder's mean, prototype + MLP([z, c]); prototype and cond broadcast against z. The first layer is
        applied to z and to c apart (the same product as on their concatenation), so a class's condition passes it
        once for all of its M draws instead of once per draw."""
        first, rest = self.decoder[0], self.decoder[1:]
        w_z, w_c = first.weight.split([self.latent, first.in_features - self.latent], 1)
        return prototype + rest(z @ w_z.T + (cond @ w_c.T + first.bias))

    def sample(
        self,
        prototypes: torch.Tensor,
        cond: torch.Tensor,
        m: int,
        generator: torch.Generator | None = None,
        parts: Parts | None = None,
    ) -> torch.Tensor:
        """[..., N, d] prototypes and conditions -> [..., N, m, d] features drawn from p(x | z, c), z ~ N(0, I): the
        decoded mean (prototype + offset(z, c); `parts.latent`) plus the decoder's Gaussian noise (`parts.noise`)."""
        parts = parts or Parts()
        shape = (*cond.shape[:-1], m, cond.shape[-1])
        z = torch.randn(*shape[:-1], self.latent, generator=generator, dtype=cond.dtype)
        noise = torch.randn(shape, generator=generator, dtype=cond.dtype)
        draws = prototypes.unsqueeze(-2).expand(shape)
        if parts.latent:
            draws = self.decode(z, prototypes.unsqueeze(-2), cond.unsqueeze(-2))
        if parts.noise:
            draws = draws + noise * (0.5 * self.log_var).exp()
        if parts.centre:
            draws = draws - draws.mean(-2, keepdim=True) + prototypes.unsqueeze(-2)
        return draws


@dataclass(frozen=True)
class Parts:
    """Which parts of MedMFG act when it generates (all by default; the ablation switches them off one by one)."""

    latent: bool = True  # the decoder's offset from (z, c): the class-specific part
    noise: bool = True  # the decoder's learned per-dimension Gaussian noise
    reweight: bool = True  # the re-representation's weights (off: every weight is 1)
    centre: bool = False  # shift a class's draws so that their mean is its prototype (removes the learned offset)


@register("medmfg.generator", "medmfg")
class MedMFG(nn.Module):
    """Re-representation and generator, trained together on source episodes."""

    def __init__(self, dim: int, reduction: int = 4, latent: int = 32, hidden: int = 128, relative: bool = True):
        super().__init__()
        self.attention = ReRepresentation(dim, reduction)
        self.cvae = CVAE(dim, latent, hidden)
        self.relative = relative

    def condition(self, prototypes: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The CVAE's condition: the re-represented prototypes, relative to their episode's mean when `relative` (an
        episode's classes are placed against each other, so a new domain's overall offset does not reach the
        decoder)."""
        if self.relative:
            prototypes = prototypes - prototypes.mean(-2, keepdim=True)
        return w.unsqueeze(-2) * prototypes

    def weights(self, prototypes: torch.Tensor, parts: Parts | None = None) -> torch.Tensor:
        if parts is not None and not parts.reweight:
            return torch.ones_like(prototypes[..., 0, :])
        return self.attention(prototypes)

    def generate(
        self, prototypes: torch.Tensor, m: int, generator: torch.Generator | None = None, parts: Parts | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [..., d], generated features [..., N, m, d]) for episodes' [..., N, d] prototypes; the features are
        in the transformed (not yet re-weighted) space, like the prototypes."""
        w = self.weights(prototypes, parts)
        return w, self.cvae.sample(prototypes, self.condition(prototypes, w), m, generator, parts)


def medmfg_predict(
    model: MedMFG,
    support: torch.Tensor,
    query: torch.Tensor,
    m: int,
    generator: torch.Generator | None = None,
    c: float = 1.0,
    iters: int = 100,
    parts: Parts | None = None,
) -> torch.Tensor:
    """MedMFG on episodes of transformed features, support [E, N, K, d] and query [E, n, d] -> labels [E, n]: a
    logistic regression on the re-represented prototypes and M generated features per class, applied to the
    re-represented queries."""
    e, n_classes = support.shape[:2]
    prototypes = support.mean(2)
    w, fake = model.generate(prototypes, m, generator, parts)
    w = w.unsqueeze(1)
    x = torch.cat([prototypes, fake.flatten(1, 2)], 1) * w
    y = torch.cat([torch.arange(n_classes), torch.arange(n_classes).repeat_interleave(m)]).expand(e, -1)
    return fit_predict(x, y, query * w, n_classes, c, iters)


# ---------------------------------------------------------------------------------------------------------------------
# Training on source episodes


class SourceEpisodes(torch.utils.data.Dataset):
    """Training episode i (N-way, K drawn from 1..max_shot, Q queries) as (prototypes [N, d], query [N, Q, d]), a
    pure function of (seed, i) so that the trainer's resume sees the same episodes. Training needs the support only
    through its mean, so episodes of different K stack into one batch."""

    def __init__(
        self, features: torch.Tensor, labels: np.ndarray, ways: int, max_shot: int, queries: int, n: int, seed: int
    ):
        self.features, self.labels = features, labels
        self.ways, self.max_shot, self.queries, self.n, self.seed = ways, max_shot, queries, n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, i])
        shots = int(rng.integers(1, self.max_shot + 1))
        ep = sample_episode(self.labels, self.ways, shots, self.queries, rng)
        return self.features[torch.from_numpy(ep.support)].mean(1), self.features[torch.from_numpy(ep.query)]


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([p for p, _ in batch]), torch.stack([q for _, q in batch])


def episode_losses(model: MedMFG, prototypes: torch.Tensor, query: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four terms, averaged over a batch of source episodes: prototypes [B, N, d], query [B, N, Q, d].

    proto: queries classified by distance to the prototypes, both re-represented (trains the attention to weigh the
      dimensions that separate classes);
    recon, kl: the CVAE's negative ELBO, reconstructing each query from its class's re-represented prototype (a
      prototype of K = 1..max_shot images, so the generator learns how far a class spreads around a noisy estimate);
    gen: features generated from each prototype classified by distance to the prototypes (they must stay nearest
      their own class).
    """
    b, n, q, d = query.shape
    labels = torch.arange(n).repeat_interleave(q).repeat(b)
    w = model.attention(prototypes).unsqueeze(1)  # [B, 1, d]

    def logits(x: torch.Tensor) -> torch.Tensor:  # [B, N, Q, d] -> [B * N * Q, N]
        return -torch.cdist(x.flatten(1, 2) * w, prototypes * w).pow(2).flatten(0, 1)

    cond = model.condition(prototypes, w.squeeze(1))
    expand = (b, n, q, d)
    target = query - prototypes.mean(1, keepdim=True).unsqueeze(2) if model.relative else query
    mu, log_var = model.cvae.encode(target, cond.unsqueeze(2).expand(expand))
    z = mu + torch.randn_like(mu) * (0.5 * log_var).exp()
    mean = model.cvae.decode(z, prototypes.unsqueeze(2).expand(expand), cond.unsqueeze(2).expand(expand))
    var_log = model.cvae.log_var
    recon = 0.5 * ((query - mean).pow(2) / var_log.exp() + var_log + math.log(2 * math.pi)).sum(-1).mean()
    kl = -0.5 * (1 + log_var - mu.pow(2) - log_var.exp()).sum(-1).mean()
    fake = model.cvae.sample(prototypes, cond, q)
    return {
        "proto": F.cross_entropy(logits(query), labels),
        "recon": recon,
        "kl": kl,
        "gen": F.cross_entropy(logits(fake), labels),
    }


def generator_loss(weights: dict[str, float]) -> Callable:
    """The trainer's loss: the weighted sum of `episode_losses` of a batch of episodes."""

    def loss(model: MedMFG, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        terms = episode_losses(model, *batch)
        return sum(weights[k] * v for k, v in terms.items()), {k: v.item() for k, v in terms.items()}

    return loss


def within_class_residuals(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each feature minus its class mean."""
    classes = labels.unique(sorted=True)
    means = torch.stack([features[labels == c].mean(0) for c in classes])
    return features - means[torch.searchsorted(classes, labels)]


def within_class_variance(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-dimension variance of the features around their class means, pooled over classes."""
    return within_class_residuals(features, labels).pow(2).mean(0).clamp_min(1e-6)


def train_generator(
    features: torch.Tensor,
    labels: np.ndarray,
    cfg: GeneratorConfig,
    seed: int,
    out_dir: Path,
    logger: Logger | None = None,
) -> MedMFG:
    """Fit MedMFG on source episodes of transformed features with the shared trainer (cfg: GeneratorConfig)."""
    from common.seeding import seeded

    with seeded(seed, "medmfg/generator"):  # its weights and training draw from the seed alone
        return _train_generator(features, labels, cfg, seed, out_dir, logger)


def _train_generator(
    features: torch.Tensor, labels: np.ndarray, cfg: GeneratorConfig, seed: int, out_dir: Path, logger: Logger | None
) -> MedMFG:
    from common.trainer import Task, fit

    model = MedMFG(features.shape[1], cfg.reduction, cfg.latent, cfg.hidden, cfg.relative)
    # Adam moves a parameter by about lr per step: from 0 the decoder's log-variance would need thousands of steps to
    # reach the features' scale, so it starts at the source's per-dimension within-class variance.
    model.cvae.log_var.data = within_class_variance(features, torch.as_tensor(labels)).log()
    data = SourceEpisodes(features, labels, cfg.ways, cfg.max_shot, cfg.queries, cfg.episodes, seed)
    weights = {"proto": cfg.proto_weight, "recon": 1.0, "kl": cfg.kl_weight, "gen": cfg.gen_weight}
    task = Task(model, data, collate, loss=generator_loss(weights))
    return fit(task, cfg.trainer, out_dir, logger).model

"""DQMQ: data-quality-aware mixed precision (Wang, Guo, Guo, Zhang; arXiv 2302.04453, IEEE TNNLS 2024).

Only the paper's abstract is at hand; this file implements what it describes, with every open choice ours (listed
with reasons in methods/dqmq/README.md):

1. Quality encoder. Each input is summarised by a few fixed image-quality statistics (noise level, high-frequency
   energy, total variation, scale ratio, blockiness, contrast, brightness: `quality_features`), computed from the
   pixels only, never from the true quality tag, standardised and encoded by a small MLP.
2. Decision policy. The encoding gives, for every quantized layer, a categorical distribution over the candidate
   bit-widths of its weights and one over those of its input activations (`BitPolicy`); at inference the choice is
   hard (argmax).
3. Hybrid objective and hybrid RL. Each training step mixes three updates, separated by stop-gradients:
   - supervised quantization training: the network and its LSQ step sizes minimise the task loss with every sample
     at the policy's hard choice, except that with probability `explore` a layer's weight or activation bits are
     one uniform draw for the whole batch (the environment's exploration);
   - model learning: a reward model learns each sample's task loss from its quality features and the configuration
     it ran with (`RewardModel`), from the very samples of the supervised step;
   - model-based policy optimisation: the objective, task loss + lambda x bit operations (counted per layer from the
     actual shapes, exact, normalised by the network's W8A8 count), is evaluated for every candidate under the frozen
     reward model, and its discrete minimum is relaxed to a continuous distribution, a softmax at a temperature
     annealed from `tau_start` to `tau_end` (`improved_policy`; one-hot, the hard minimum, as it tends to 0). The
     policy is fitted to that distribution by cross-entropy: soft policy iteration on the learned model.
   A warm-up explores on every layer (uniformly random configurations: any-precision training and the reward model's
   first data); a final phase freezes the policy and trains the network under its hard choices, as it runs at
   inference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from methods.dqmq.quant import bitops

N_FEATURES = 7
_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
# Immerkaer's noise estimator (1996): the difference of two Laplacians cancels image structure, not noise.
_IMMERKAER = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def _tv(g: torch.Tensor) -> torch.Tensor:
    return (g.diff(dim=-1).abs().mean((1, 2, 3)) + g.diff(dim=-2).abs().mean((1, 2, 3))) / 2


def quality_features(image: torch.Tensor) -> torch.Tensor:
    """[N, 7] quality statistics of images [N, C, H, W] in [0, 1] (on the grey level): log contrast, log noise sigma,
    log high-frequency energy ratio, log total variation per contrast, log TV ratio at half scale (blur and
    downsampling raise it, noise lowers it), blockiness at the 8-px JPEG grid, mean brightness."""
    g = image.float().mean(1, keepdim=True)
    eps = 1e-4
    contrast = (g - g.mean((2, 3), keepdim=True)).pow(2).mean((1, 2, 3)).sqrt() + eps
    kernel = torch.stack([_LAPLACE, _IMMERKAER])[:, None].to(g)
    lap, imm = F.conv2d(g, kernel).abs().mean((2, 3)).unbind(1)
    noise = math.sqrt(math.pi / 2) * imm / 6
    tv = _tv(g) + eps
    tv_half = _tv(F.avg_pool2d(g, 2)) + eps if min(g.shape[-2:]) >= 4 else tv
    dx = g.diff(dim=-1).abs()
    if dx.shape[-1] >= 9:  # differences across column 8k-1 -> 8k against all others (fixed indices: exportable)
        grid = [i for i in range(dx.shape[-1]) if i % 8 == 7]
        rest = [i for i in range(dx.shape[-1]) if i % 8 != 7]
        blocky = dx[..., grid].mean((1, 2, 3)) / (dx[..., rest].mean((1, 2, 3)) + eps)
    else:
        blocky = torch.ones_like(contrast)
    return torch.stack(
        [
            contrast.log(),
            (noise + eps).log(),
            ((lap + eps) / contrast).log(),
            (tv / contrast).log(),
            (tv_half / tv).log(),
            blocky,
            g.mean((1, 2, 3)),
        ],
        dim=1,
    )


class BitPolicy(nn.Module):
    """Quality features -> per-layer logits over the candidate bits, [N, L, 2 (weights, activations), K]."""

    def __init__(self, n_layers: int, n_bits: int, hidden: int = 32):
        super().__init__()
        self.shape = (n_layers, 2, n_bits)
        # Standardisation of the features, fitted once on the training images (fit_features) and saved with the model.
        self.register_buffer("feat_mean", torch.zeros(N_FEATURES))
        self.register_buffer("feat_std", torch.ones(N_FEATURES))
        self.encoder = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.head = nn.Linear(hidden, n_layers * 2 * n_bits)
        nn.init.zeros_(self.head.weight)  # start from the uniform distribution over the candidates
        nn.init.zeros_(self.head.bias)

    @torch.no_grad()
    def fit_features(self, images: torch.Tensor) -> None:
        q = quality_features(images)
        self.feat_mean.copy_(q.mean(0))
        self.feat_std.copy_(q.std(0).clamp_min(1e-3))

    def features(self, image: torch.Tensor) -> torch.Tensor:
        return (quality_features(image) - self.feat_mean) / self.feat_std

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(q)).view(len(q), *self.shape)


class RewardModel(nn.Module):
    """The learned model of the environment: a sample's task loss given its quality features and a bit configuration
    (one-hot [N, L, 2, K]). It is a quality-conditioned
    sensitivity model: loss = base(q) + sum over layers and bits of config x effect(q), i.e. every layer's choice
    adds a quality-dependent amount (interactions between layers are left out, as in Hessian-based allocations), which
    makes the noisy per-sample losses of one run enough to fit it, and lets the policy improvement below weigh every
    choice of every layer at once. The cost half of the reward, bit operations, is known exactly and is not learned."""

    def __init__(self, n_layers: int, n_bits: int, hidden: int = 64):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.shape = (n_layers, 2, n_bits)
        self.base = nn.Linear(hidden, 1)
        self.effect = nn.Linear(hidden, n_layers * 2 * n_bits)

    def effects(self, q: torch.Tensor) -> torch.Tensor:
        """The predicted loss each choice adds, [N, L, 2, K]."""
        return self.effect(self.encoder(q)).view(len(q), *self.shape)

    def forward(self, q: torch.Tensor, config: torch.Tensor) -> torch.Tensor:
        h = self.encoder(q)
        return self.base(h).squeeze(1) + (self.effect(h) * config.flatten(1)).sum(1)


def improved_policy(
    effects: torch.Tensor, macs: torch.Tensor, candidates: torch.Tensor, lam: float, reference: torch.Tensor, tau: float
) -> torch.Tensor:
    """The relaxed best choice under the learned model, [N, L, 2, K]: for every layer, the objective of each (weight,
    activation) pair, predicted loss + lambda x its BitOps / reference, turned into a distribution by a softmax at
    temperature tau (a one-hot at the minimum as tau -> 0), whose weight and activation marginals are returned. The
    pair is scored jointly because a layer's BitOps are the product of its two bit-widths."""
    b = candidates.to(effects)
    cost = lam * macs.to(effects)[:, None, None] * b[:, None] * b[None, :] / reference  # [L, K, K]
    joint = effects[:, :, 0, :, None] + effects[:, :, 1, None, :] + cost
    p = torch.softmax(-joint.flatten(2) / tau, dim=-1).view_as(joint)
    return torch.stack([p.sum(-1), p.sum(-2)], dim=2)


def temperature(progress: float, start: float, end: float) -> float:
    """Exponential annealing from `start` (progress 0) to `end` (progress 1)."""
    p = min(max(progress, 0.0), 1.0)
    return start * (end / start) ** p


def expected_bitops(macs: torch.Tensor, probs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Expected BitOps per sample under per-layer distributions probs [N, L, 2, K] (weights and activations drawn
    independently)."""
    bits = probs @ candidates.to(probs)
    return bitops(macs, bits[..., 0], bits[..., 1])


def explore_choices(logits: torch.Tensor, explore: float) -> torch.Tensor:
    """Candidate indices [N, L, 2]: the policy's hard choice per sample, except that each layer's weight (and each
    layer's activation) choice is, with probability `explore`, one uniform draw for the whole batch. The reward model
    thus keeps seeing the configurations the policy stopped choosing, and exploring adds no weight bit-width group
    to a layer's pass (drawn per sample, every bit-width would be in every layer of every batch)."""
    idx = logits.argmax(-1)
    n, layers, two, k = logits.shape
    draw = torch.randint(k, (1, layers, two), device=logits.device).expand(n, -1, -1)
    return torch.where(torch.rand(1, layers, two, device=logits.device) < explore, draw, idx)


def hybrid_loss(p, total_calls: int):
    """The trainer's loss for DQMQ (settings `p`: the `policy` section): the three mixed updates above, in phases by
    training progress. The model counts its loss calls in a buffer, so phases and temperature survive a resume."""

    def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = batch["x"], batch["y"]
        progress = model.calls.item() / total_calls
        model.calls += 1
        search_end = 1 - p.finetune_fraction
        q = model.policy.features(x)
        logits = model.policy(q)
        explore = 1.0 if progress < p.warmup_fraction else p.explore if progress < search_end else 0.0
        idx = explore_choices(logits.detach(), explore)
        ce = F.cross_entropy(model(x, bits=(idx[..., 0], idx[..., 1])), y, reduction="none")
        total = ce.mean()
        logs = {"ce": total.item()}
        if progress >= search_end:
            return total, logs
        # Model learning: the observed per-sample loss of the configuration each sample ran with.
        observed = F.one_hot(idx, logits.shape[-1]).float()
        fit = F.mse_loss(model.reward(q.detach(), observed), ce.detach())
        total = total + fit
        logs["reward_mse"] = fit.item()
        if progress >= p.warmup_fraction:
            # Policy improvement on the learned model (frozen: the target carries no gradient), fitted by cross-entropy.
            tau = temperature((progress - p.warmup_fraction) / (search_end - p.warmup_fraction), p.tau_start, p.tau_end)
            with torch.no_grad():
                target = improved_policy(
                    model.reward.effects(q), model.macs, model.candidates, p.lam, model.w8a8_bitops, tau
                )
            fit_policy = -(target * logits.log_softmax(-1)).sum((1, 2, 3)).mean()
            total = total + fit_policy
            expected = expected_bitops(model.macs, logits.detach().softmax(-1), model.candidates)
            logs.update(
                tau=tau, policy_ce=fit_policy.item(), bitops_vs_w8a8=(expected / model.w8a8_bitops).mean().item()
            )
        return total, logs

    return loss

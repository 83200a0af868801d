"""DQMQ's policy: expected BitOps against a hand count, the relaxation, quality features, exploration, the hybrid
objective's separated updates, and the model-based policy update on a toy environment."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from common.config import compose
from methods.dqmq.data import Level, at_level
from methods.dqmq.policy import (
    BitPolicy,
    RewardModel,
    expected_bitops,
    explore_choices,
    hybrid_loss,
    improved_policy,
    quality_features,
    temperature,
)
from methods.dqmq.quant import quant_layers, set_bits, swap_layers
from tests.dqmq.conftest import tiny_model


def test_expected_bitops_equals_a_hand_count_on_a_two_layer_net():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 8 * 8, 10))
    swap_layers(net, [2, 4, 8])
    layers = quant_layers(net)
    set_bits(layers, torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))
    net.eval()(torch.zeros(1, 1, 8, 8))
    macs = torch.tensor([float(layer.macs) for layer in layers])
    assert macs.tolist() == [2 * 8 * 8 * 1 * 3 * 3, 128 * 10]  # 1,152 and 1,280 multiply-accumulates
    probs = torch.tensor(
        [
            [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]],  # conv: E[w] = 3 bits, E[a] = 8 bits
            [[0.0, 1.0, 0.0], [0.25, 0.25, 0.5]],  # linear: E[w] = 4 bits, E[a] = 0.5 + 1 + 4 = 5.5 bits
        ]
    )[None]
    hand = 1152 * 3 * 8 + 1280 * 4 * 5.5  # = 55,808
    assert expected_bitops(macs, probs, torch.tensor([2, 4, 8])).item() == hand
    one_hot = F.one_hot(torch.tensor([[[2, 2], [0, 1]]]), 3).float()  # W8A8 then W2A4
    assert expected_bitops(macs, one_hot, torch.tensor([2, 4, 8])).item() == 1152 * 64 + 1280 * 2 * 4


def test_relaxed_choice_becomes_one_hot_at_low_temperature():
    """improved_policy relaxes, per layer, the argmin over (weight, activation) pairs of predicted loss + lambda x
    BitOps: a one-hot at that argmin (found here by enumeration) at low temperature, near uniform at a high one."""
    torch.manual_seed(0)
    cand, macs = torch.tensor([2, 4, 8]), torch.tensor([100.0, 300.0])
    effects = torch.randn(50, 2, 2, 3) * 0.3
    lam, ref = 0.5, macs.sum() * 64
    best = torch.empty(50, 2, 2, dtype=torch.long)
    for n in range(50):
        for layer in range(2):
            scores = {
                (i, j): float(
                    effects[n, layer, 0, i] + effects[n, layer, 1, j] + lam * macs[layer] * cand[i] * cand[j] / ref
                )
                for i in range(3)
                for j in range(3)
            }
            best[n, layer] = torch.tensor(min(scores, key=scores.get))
    cold = improved_policy(effects, macs, cand, lam, ref, tau=1e-6)
    assert torch.allclose(cold.sum(-1), torch.ones(50, 2, 2))
    assert torch.equal(cold.argmax(-1), best) and (cold.max(-1).values > 0.999).all()
    warm = improved_policy(effects, macs, cand, lam, ref, tau=100.0)
    assert (warm - 1 / 3).abs().max() < 0.01
    entropy = [
        float(-(p * p.clamp_min(1e-12).log()).sum())
        for p in (improved_policy(effects, macs, cand, lam, ref, t) for t in (10, 1, 0.1, 0.01))
    ]
    assert all(a > b for a, b in zip(entropy, entropy[1:]))
    assert temperature(0, 0.5, 0.01) == 0.5 and abs(temperature(1, 0.5, 0.01) - 0.01) < 1e-12
    assert 0.01 < temperature(0.5, 0.5, 0.01) < 0.5 and temperature(2, 0.5, 0.01) == temperature(1, 0.5, 0.01)


def test_quality_features_respond_to_corruptions_and_ignore_the_tag():
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images[:64] / 16 * 255).round().to(torch.uint8)[:, None]
    x = torch.nn.functional.interpolate(x.float(), size=16, mode="bilinear").round().to(torch.uint8)
    clean = quality_features(at_level(x, Level("clean"), 0)).mean(0)
    noisy = quality_features(at_level(x, Level("gaussian_noise", 5), 0)).mean(0)
    blurred = quality_features(at_level(x, Level("gaussian_blur", 5), 0)).mean(0)
    small = quality_features(at_level(x, Level("downsample", 5), 0)).mean(0)
    jpeg = quality_features(at_level(x, Level("jpeg", 5), 0)).mean(0)
    noise, high_freq, blockiness = 1, 2, 5
    assert noisy[noise] > clean[noise] + 2 and noisy[high_freq] > clean[high_freq]
    assert blurred[high_freq] < clean[high_freq] and small[high_freq] < clean[high_freq]
    assert jpeg[blockiness] > clean[blockiness]


def test_exploration_is_shared_by_the_batch_and_zero_exploration_is_the_argmax():
    torch.manual_seed(0)
    logits = torch.randn(64, 3, 2, 5)
    assert torch.equal(explore_choices(logits, 0.0), logits.argmax(-1))
    everything = explore_choices(logits, 1.0)
    assert (everything == everything[:1]).all()  # one configuration for the whole batch
    draws = torch.stack([explore_choices(logits, 1.0)[0] for _ in range(300)])
    assert len(torch.unique(draws)) == 5  # every candidate gets explored


def _grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


def test_hybrid_objective_updates_each_part_only_through_its_own_term():
    """Network: the task loss; reward model: its fit to the observed losses; policy: cross-entropy to the relaxed
    best choice under the (frozen) reward model."""
    p = compose("dqmq", "policy.explore=0", "policy.lam=0.7").policy
    model = tiny_model("dqmq").train()
    x, y = torch.rand(16, 1, 12, 12), torch.randint(0, 10, (16,))
    model.calls.fill_(50)  # in the search phase of 100 calls
    loss, logs = hybrid_loss(p, 100)(model, {"x": x, "y": y})
    loss.backward()
    assert {"ce", "reward_mse", "tau", "policy_ce", "bitops_vs_w8a8"} <= set(logs)

    ref = copy.deepcopy(model)
    ref.zero_grad()
    q = ref.policy.features(x)
    logits = ref.policy(q)
    idx = logits.argmax(-1)
    ce = F.cross_entropy(ref(x, bits=(idx[..., 0], idx[..., 1])), y, reduction="none")
    ce.mean().backward()
    F.mse_loss(ref.reward(q, F.one_hot(idx, 3).float()), ce.detach()).backward()
    tau = temperature((0.5 - p.warmup_fraction) / (1 - p.finetune_fraction - p.warmup_fraction), p.tau_start, p.tau_end)
    target = improved_policy(ref.reward.effects(q).detach(), ref.macs, ref.candidates, p.lam, ref.w8a8_bitops, tau)
    (-(target * logits.log_softmax(-1)).sum((1, 2, 3)).mean()).backward()
    for part in ("net", "reward", "policy"):
        for mine, theirs in zip(_grads(getattr(model, part)), _grads(getattr(ref, part)), strict=True):
            assert torch.allclose(mine, theirs, atol=1e-6), part
    assert all(g.abs().sum() > 0 for g in _grads(model.policy))

    # warm-up: no policy update yet; final phase: the network alone
    for calls, updated in ((5, ("net", "reward")), (95, ("net",))):
        model.zero_grad()
        model.calls.fill_(calls)
        hybrid_loss(p, 100)(model, {"x": x, "y": y})[0].backward()
        for part in ("net", "reward", "policy"):
            moved = any(g.abs().sum() > 0 for g in _grads(getattr(model, part)))
            assert moved == (part in updated), (calls, part)


def test_model_based_policy_update_learns_a_quality_dependent_choice():
    """A toy environment with two layers: running layer 0's weights at 2 bits costs loss only on inputs whose first
    quality feature is positive. Fitting the reward model on random configurations and then optimising the policy
    against it (frozen) plus the BitOps cost gives 2 bits where they are harmless and more where they are not."""
    torch.manual_seed(0)
    layers, k, cand, macs = 2, 3, torch.tensor([2, 4, 8]), torch.tensor([1.0, 1.0])
    reward, policy = RewardModel(layers, k, 32), BitPolicy(layers, k, 16)

    def environment(q, idx):
        return 2.0 * ((q[:, 0] > 0) & (idx[:, 0, 0] == 0)).float() + 0.3 * torch.randn(len(q))

    opt = torch.optim.Adam(reward.parameters(), 1e-2)
    for _ in range(400):
        q = torch.randn(128, 7)
        idx = torch.randint(0, k, (128, layers, 2))
        loss = F.mse_loss(reward(q, F.one_hot(idx, k).float()), environment(q, idx))
        opt.zero_grad()
        loss.backward()
        opt.step()
    reward.requires_grad_(False)
    opt = torch.optim.Adam(policy.parameters(), 1e-2)
    for step in range(300):
        q = torch.randn(128, 7)
        target = improved_policy(
            reward.effects(q), macs, cand, 5.0, macs.sum() * 64, temperature(step / 300, 1.0, 0.02)
        )
        loss = -(target * policy(q).log_softmax(-1)).sum((1, 2, 3)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    q = torch.randn(512, 7)
    choice = cand[policy(q).argmax(-1)]
    harmful, harmless = q[:, 0] > 0.5, q[:, 0] < -0.5
    assert (choice[harmless, 0, 0] == 2).float().mean() > 0.9
    assert (choice[harmful, 0, 0] > 2).float().mean() > 0.9
    assert (choice[:, 1] == 2).float().mean() > 0.9  # everywhere else the cost wins

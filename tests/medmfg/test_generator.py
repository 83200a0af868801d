"""MedMFG's generator on a toy set: what it generates for a new class stays with that class."""

from __future__ import annotations

import torch

from methods.medmfg.episodes import sample_episodes
from methods.medmfg.generator import medmfg_predict, tukey


def test_generated_features_lie_nearer_their_own_prototype(toy, toy_generator):
    _, _, target, target_labels = toy
    x = tukey(target, 0.5)
    episodes = sample_episodes(target_labels.numpy(), 5, 1, 1, 20, seed=1)
    prototypes = torch.stack([x[torch.from_numpy(ep.support)].mean(1) for ep in episodes])  # [20, 5, d]
    with torch.no_grad():
        w, fake = toy_generator.generate(prototypes, 50, torch.Generator().manual_seed(0))
    w = w.unsqueeze(1)
    nearest = torch.cdist(fake.flatten(1, 2) * w, prototypes * w).argmin(-1)  # [20, 5 * 50]
    own = nearest == torch.arange(5).repeat_interleave(50)
    assert own.float().mean() >= 0.95
    # Variational, not copies of the prototype: the draws spread, and around it (centred).
    assert fake.std(2).mean() > 0.05
    torch.testing.assert_close(fake.mean(2), prototypes, atol=1e-5, rtol=0)
    assert w.shape == (20, 1, x.shape[1]) and torch.allclose(w.mean(-1), torch.ones(20, 1))


def test_medmfg_classifies_new_classes_from_one_image(toy, toy_generator):
    _, _, target, target_labels = toy
    x = tukey(target, 0.5)
    episodes = sample_episodes(target_labels.numpy(), 5, 1, 10, 20, seed=2)
    support = torch.stack([x[torch.from_numpy(ep.support)] for ep in episodes])
    query = torch.stack([x[torch.from_numpy(ep.query.flatten())] for ep in episodes])
    with torch.no_grad():
        pred = medmfg_predict(toy_generator, support, query, m=20, generator=torch.Generator().manual_seed(0))
    assert (pred == torch.arange(5).repeat_interleave(10)).float().mean() >= 0.97

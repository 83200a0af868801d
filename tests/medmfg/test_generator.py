"""MedMFG's parts on toy sets where each has something to do, so that each test fails when its part does nothing:
the re-weighting must weigh the dimensions that tell classes apart above those that only vary within a class (uniform
weights fail), and the decoder must use its latent to spread draws the way classes spread (a decoder that ignores z
fails) and move them toward where the class lies, beyond the prototype (centred draws fail)."""

from __future__ import annotations

import pytest
import torch

from methods.medmfg.episodes import sample_episodes
from methods.medmfg.generator import MedMFG, Parts, medmfg_predict, tukey

INFORMATIVE, NUISANCE = 8, 8


def nuisance_features(n_classes: int, per_class: int, seed: int):
    """Classes that differ in the first 8 dimensions only; every class also varies a lot (std 1) along one shared
    direction u of the last 8, where all classes have the same mean. Returns (features, labels, u)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.zeros(INFORMATIVE + NUISANCE)
    u[INFORMATIVE:] = torch.tensor([1.0, -1.0, 0.5, 0.5, -0.5, 1.0, 0.0, -0.5])
    u = u / u.norm()
    means = torch.cat([2 * torch.rand(n_classes, INFORMATIVE, generator=torch.Generator().manual_seed(7))], 1)
    means = torch.cat([means, torch.ones(n_classes, NUISANCE)], 1)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    along = torch.randn(len(labels), 1, generator=g)
    x = means[labels] + along * u + 0.1 * torch.randn(len(labels), INFORMATIVE + NUISANCE, generator=g)
    return x, labels, u, means


@pytest.fixture(scope="module")
def nuisance_generator(tmp_path_factory) -> tuple[MedMFG, tuple]:
    from methods.medmfg.config import GeneratorConfig
    from methods.medmfg.generator import train_generator

    torch.set_num_threads(1)
    x, labels, u, means = nuisance_features(12, 40, seed=1)
    cfg = GeneratorConfig(episodes=2400, latent=4, hidden=64, max_shot=1)
    cfg.trainer.progress = False
    model = train_generator(x, labels.numpy(), cfg, seed=0, out_dir=tmp_path_factory.mktemp("nuisance"))
    return model.eval(), (x, labels, u, means)


def _one_shot_prototypes(labels: torch.Tensor, x: torch.Tensor, n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    episodes = sample_episodes(labels.numpy(), 5, 1, 1, n, seed=3)
    classes = torch.stack([torch.from_numpy(ep.classes) for ep in episodes])
    return torch.stack([x[torch.from_numpy(ep.support)].mean(1) for ep in episodes]), classes


def test_reweighting_weighs_the_informative_dimensions_up(nuisance_generator):
    model, (x, labels, _, _) = nuisance_generator
    prototypes, _ = _one_shot_prototypes(labels, x)
    with torch.no_grad():
        w = model.weights(prototypes)
    assert torch.allclose(w.mean(-1), torch.ones(len(w)))  # normalised to mean 1
    informative, nuisance = w[:, :INFORMATIVE].mean(), w[:, INFORMATIVE:].mean()
    assert nuisance < 0.85 * informative, (informative, nuisance)  # measured: 0.76 of it
    uniform = model.weights(prototypes, Parts(reweight=False))  # the ablation's weights: this test's negative
    assert not uniform[:, INFORMATIVE:].mean() < 0.85 * uniform[:, :INFORMATIVE].mean()


def _latent_draws(model: MedMFG, prototypes: torch.Tensor, m: int = 200) -> torch.Tensor:
    with torch.no_grad():
        _, fake = model.generate(prototypes, m, torch.Generator().manual_seed(0), Parts(noise=False))
    return fake


def test_the_latent_spreads_draws_along_the_direction_classes_vary(nuisance_generator):
    model, (x, labels, u, _) = nuisance_generator
    prototypes, _ = _one_shot_prototypes(labels, x)
    fake = _latent_draws(model, prototypes)  # [E, N, m, d], the decoder's mean only: all spread comes from z
    along = ((fake - fake.mean(2, keepdim=True)) @ u).var(2).mean()
    across = (fake - fake.mean(2, keepdim=True)).pow(2).sum(-1).mean()
    assert along > 0.3, along  # the classes' variance along u is 1
    assert along > 0.6 * across, (along, across)  # and mostly along u, not in every direction

    # The same decoder made to ignore its latent (its weights on z zeroed) spreads nothing: the test's negative.
    blind = MedMFG(x.shape[1], latent=4, hidden=64)
    blind.load_state_dict(model.state_dict())
    with torch.no_grad():
        blind.cvae.decoder[0].weight[:, : blind.cvae.latent] = 0
    flat = _latent_draws(blind.eval(), prototypes)
    assert ((flat - flat.mean(2, keepdim=True)) @ u).var(2).mean() < 1e-6


def test_draws_move_toward_the_class_beyond_the_prototype(nuisance_generator):
    """A 1-shot prototype lies off its class's mean along u by a random amount; the decoder, trained on source
    episodes, learns that classes sit at the episode's common position along u, so its draws' mean is nearer the
    class mean than the prototype is. Centring the draws on the prototype (`Parts.centre`) removes this."""
    model, (x, labels, _, means) = nuisance_generator
    prototypes, classes = _one_shot_prototypes(labels, x)
    fake = _latent_draws(model, prototypes)
    truth = means[classes]
    moved = (fake.mean(2) - truth).norm(dim=-1).mean()
    stayed = (prototypes - truth).norm(dim=-1).mean()
    assert moved < 0.8 * stayed, (moved, stayed)
    with torch.no_grad():
        _, centred = model.generate(prototypes, 200, torch.Generator().manual_seed(0), Parts(noise=False, centre=True))
    torch.testing.assert_close(centred.mean(2), prototypes, atol=1e-5, rtol=0)


def test_medmfg_classifies_new_classes_from_one_image(toy, toy_generator):
    _, _, target, target_labels = toy
    x = tukey(target, 0.5)
    episodes = sample_episodes(target_labels.numpy(), 5, 1, 10, 20, seed=2)
    support = torch.stack([x[torch.from_numpy(ep.support)] for ep in episodes])
    query = torch.stack([x[torch.from_numpy(ep.query.flatten())] for ep in episodes])
    with torch.no_grad():
        pred = medmfg_predict(toy_generator, support, query, m=20, generator=torch.Generator().manual_seed(0))
    assert (pred == torch.arange(5).repeat_interleave(10)).float().mean() >= 0.97

"""t-SNE of the target classes' real features against the features MedMFG generates from a few-shot prototype."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from methods.medmfg.backbone import Features
from methods.medmfg.config import MedMFGConfig
from methods.medmfg.episodes import sample_episodes
from methods.medmfg.generator import MedMFG, tukey


def plot_tsne(features: Features, model: MedMFG, cfg: MedMFGConfig, out: Path) -> dict[str, float]:
    """One seeded episode's classes: every real image (dots), M generated features per class (crosses) and the
    prototypes (stars), re-represented, in 2-D. Returns how often a generated feature's nearest real class mean (in
    the re-represented space, before t-SNE) is its own class's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    t = cfg.tsne
    labels = features.target_labels.numpy()
    ep = sample_episodes(labels, t.ways, t.shots, 0, t.episode + 1, cfg.seed)[t.episode]
    x = tukey(features.target, cfg.tukey_beta)
    prototypes = x[torch.from_numpy(ep.support)].mean(1)
    with torch.no_grad():
        w, fake = model.generate(prototypes, t.samples, torch.Generator().manual_seed(cfg.seed))
    real = [x[torch.from_numpy(labels == c)] * w for c in ep.classes]
    fake = fake * w
    means = torch.stack([r.mean(0) for r in real])
    own = torch.cdist(fake.flatten(0, 1), means).argmin(1) == torch.arange(t.ways).repeat_interleave(t.samples)

    points = torch.cat([*real, fake.flatten(0, 1), prototypes * w]).numpy()
    perplexity = min(t.perplexity, (len(points) - 1) / 3)
    xy = TSNE(perplexity=perplexity, init="pca", random_state=cfg.seed).fit_transform(points)
    sizes = np.cumsum([0, *(len(r) for r in real), t.ways * t.samples])
    fig, ax = plt.subplots(figsize=(7, 6))
    for i, c in enumerate(ep.classes):
        color = plt.cm.tab10(i % 10)
        name = features.target_classes[c]
        ax.scatter(*xy[sizes[i] : sizes[i + 1]].T, s=8, color=color, alpha=0.5, label=f"{name} (real)")
        gen = xy[sizes[-2] + i * t.samples : sizes[-2] + (i + 1) * t.samples]
        ax.scatter(*gen.T, s=14, color=color, marker="x", label=f"{name} (generated)")
        ax.scatter(*xy[sizes[-1] + i], s=220, color=color, marker="*", edgecolors="black")
    ax.set_title(f"MedMFG: real vs generated target features ({t.shots}-shot prototypes, stars)")
    ax.legend(fontsize=7, markerscale=1.5, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return {"tsne/generated_nearest_own_class": own.float().mean().item()}

"""MedMFG's ablation and fusions on the embedded cross-domain task (natural source -> medical target, the offline
default's stages), with what a perfect generator could reach, and the time of MedMFG's generation against DC's.

On the same episodes (one seeded set per shot setting), every method of the table and MedMFG with one part switched
off. Each difference is paired: the mean over episodes of (a's accuracy - b's accuracy) with its 95% interval
1.96 * std / sqrt(n), which is what decides whether a part helps (per-method intervals overlap even when a part helps on
nearly every episode). Goals (issue 22): in 5-way 1-shot, generation adds >= 2 points (medmfg - medmfg:prototypes,
the interval above 0); each fusion is never worse than its base (+medmfg on protonet, logreg, dc).

Oracles, beside the table: a logistic regression on each prototype plus M draws per class from the true target class
(it uses every image of the class): from N(prototype, the class's covariance) (what a generator that knows how the
class spreads could add) and from N(the class's mean, its covariance) (what one that also knows where the class lies
could add). ProtoNet's distance to them is the room the task leaves.

`--spread` adds rows with one covariance shared by every class, pooled within-class over the source (as a correlated
decoder noise learned there could carry) or over the target (an upper bound), around the prototype or around MedMFG's
learned offset: whether the decoder's diagonal noise is what holds generation back.

Time: generating M features per class for an episode, MedMFG's decoder against DC's calibrated Gaussians with the same
M (goal: MedMFG <= 2x DC), in interleaved repeats (the order alternates), median and spread of the per-repeat ratios,
with the load average before and after. ms per episode of every method (generation + classifier) is in the table.

Usage: python bench/medmfg_episodes.py [--episodes 600] [--repeats 5] [--spread] [hydra overrides of conf/medmfg.yaml ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

import methods.medmfg.__main__  # noqa: F401 - registers the methods
from common.bench import load, spread
from common.config import compose
from methods.medmfg.backbone import cached_features
from methods.medmfg.baselines import calibrated_samples, evaluate, make_context
from methods.medmfg.classifier import fit_predict
from methods.medmfg.commands import generator_stage
from methods.medmfg.config import ABLATIONS, METHODS
from methods.medmfg.episodes import mean_ci, paired_ci, sample_episodes
from methods.medmfg.generator import Parts, tukey, within_class_residuals

FREE_LUNCH = 750
PAIRS = [  # (a, b): a - b, paired on the same episodes
    ("medmfg", "medmfg:prototypes", "generation (goal >= 2, interval above 0 in 1-shot)"),
    ("medmfg", "medmfg:noise", "the latent's offset"),
    ("medmfg", "medmfg:latent", "the decoder's noise"),
    ("medmfg", "medmfg:uniform", "re-weighting"),
    ("medmfg", "medmfg:centred", "the learned offset beyond the prototype (not centring)"),
    ("protonet+medmfg", "protonet", "fusion (goal >= 0)"),
    ("logreg+medmfg", "logreg", "fusion (goal >= 0)"),
    ("dc+medmfg", "dc", "fusion (goal >= 0)"),
    ("medmfg", "protonet", ""),
    ("medmfg", "logreg", ""),
    ("medmfg", "dc", ""),
    ("medmfg", f"dc ({FREE_LUNCH}/class)", ""),
]


def oracles(features, cfg, episodes) -> dict[str, float]:
    """Accuracy (%) of a logistic regression on each prototype + M draws per class from the true target class."""
    x, labels = tukey(features.target, cfg.tukey_beta), features.target_labels
    classes = labels.unique(sorted=True)
    means = torch.stack([x[labels == c].mean(0) for c in classes])
    d = x.shape[1]
    jitter = 1e-6 * torch.eye(d, dtype=torch.float64)
    factors = torch.stack([torch.linalg.cholesky(torch.cov(x[labels == c].T.double()) + jitter) for c in classes])
    support = torch.stack([x[torch.from_numpy(ep.support)] for ep in episodes])
    query = torch.stack([x[torch.from_numpy(ep.query.flatten())] for ep in episodes])
    ids = torch.from_numpy(np.stack([ep.classes for ep in episodes]))
    e, n, k, _ = support.shape
    m = cfg.generator.samples
    y = torch.cat([torch.arange(n).repeat_interleave(k), torch.arange(n).repeat_interleave(m)]).expand(e, -1)
    truth = torch.arange(n).repeat_interleave(episodes[0].query.shape[1])
    g = torch.Generator().manual_seed(cfg.seed)
    spread_ = torch.einsum("enij,enmj->enmi", factors[ids].float(), torch.randn(e, n, m, d, generator=g))
    out = {}
    for name, centre in (("prototype", support.mean(2)), ("class mean", means[ids])):
        train = torch.cat([support.flatten(1, 2), (centre.unsqueeze(2) + spread_).flatten(1, 2)], 1)
        pred = fit_predict(train, y, query, n, cfg.eval.logreg_c, cfg.eval.logreg_iters)
        out[f"oracle: N({name}, true class covariance)"] = 100 * (pred == truth).float().mean().item()
    return out


def pooled_covariance(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Within-class covariance pooled over classes (float64)."""
    r = within_class_residuals(x, labels).double()
    return r.T @ r / (len(x) - len(labels.unique()))


def rank_plus_diagonal(cov: torch.Tensor, rank: int) -> torch.Tensor:
    """The top `rank` eigen-directions of cov, and the rest of its variance on the diagonal."""
    values, vectors = torch.linalg.eigh(cov)
    low = vectors[:, -rank:] * values[-rank:].clamp_min(0).sqrt()
    return low @ low.T + torch.diag((cov.diagonal() - (low**2).sum(1)).clamp_min(1e-8))


def shared_spread(features, ctx, cfg, episodes) -> dict[str, np.ndarray]:
    """Per-episode accuracy of logistic regression on the re-weighted prototypes + M draws per class from one
    covariance shared by every class, around the prototype or around MedMFG's learned offset (its noise replaced):
    whether a correlated decoder noise learned on the source could add what the diagonal one does not."""
    beta, m = cfg.tukey_beta, ctx.samples
    source, target = tukey(features.source, beta), tukey(features.target, beta)
    cov_source = pooled_covariance(source, features.source_labels)
    covs = {
        "source": cov_source,
        "source rank 8 + diagonal": rank_plus_diagonal(cov_source, 8),
        "source diagonal": torch.diag(cov_source.diagonal()),
        "target (upper bound)": pooled_covariance(target, features.target_labels),
    }
    support = torch.stack([target[torch.from_numpy(ep.support)] for ep in episodes])
    query = torch.stack([target[torch.from_numpy(ep.query.flatten())] for ep in episodes])
    e, n, _, d = support.shape
    prototypes = support.mean(2)
    y = torch.cat([torch.arange(n), torch.arange(n).repeat_interleave(m)]).expand(e, -1)
    truth = torch.arange(n).repeat_interleave(episodes[0].query.shape[1])
    with torch.no_grad():
        w, offset = ctx.model.generate(prototypes, m, torch.Generator().manual_seed(cfg.seed), Parts(noise=False))
    w = w.unsqueeze(1)
    out = {}
    for name, cov in covs.items():
        factor = torch.linalg.cholesky(cov + 1e-6 * cov.diagonal().mean() * torch.eye(d, dtype=cov.dtype)).float()
        noise = torch.randn(e, n, m, d, generator=torch.Generator().manual_seed(cfg.seed)) @ factor.T
        centres = [("prototype", prototypes.unsqueeze(2))]
        if name != "source diagonal":
            centres.append(("MedMFG's offset", offset))
        for centre_name, centre in centres:
            train = torch.cat([prototypes, (centre + noise).flatten(1, 2)], 1)
            pred = fit_predict(train * w, y, query * w, n, cfg.eval.logreg_c, cfg.eval.logreg_iters)
            out[f"{centre_name} + N(0, {name} cov.)"] = (pred == truth).float().mean(1).numpy()
    return out


def generation_times(ctx, support: torch.Tensor, repeats: int) -> list[float]:
    """Seconds to generate M features per class for a chunk of episodes, MedMFG / DC at the same M, per repeat."""
    same = dataclasses.replace(ctx, dc_samples=ctx.samples * support.shape[2], _factors=ctx._factors)
    s = tukey(support, ctx.beta)
    calibrated_samples(s, same)  # DC's Cholesky factors are made once per base-class set: not in the timing
    ratios, t_m, t_d = [], [], []
    for r in range(repeats):
        pair = [(lambda: ctx.model.generate(s.mean(2), ctx.samples, ctx.generator), t_m)]
        pair.append((lambda: calibrated_samples(s, same), t_d))
        for fn, times in pair if r % 2 == 0 else pair[::-1]:
            start = time.perf_counter()
            with torch.no_grad():
                fn()
            times.append(time.perf_counter() - start)
        ratios.append(t_m[-1] / t_d[-1])
    e = len(support)
    print(f"    medmfg generate: {spread([1000 * t / e for t in t_m], ' ms', 2)} per episode")
    print(f"    dc calibrate+sample: {spread([1000 * t / e for t in t_d], ' ms', 2)} per episode")
    return ratios


def report(scores: dict, shots: int) -> None:
    print(f"  paired differences (a - b, same {len(next(iter(scores.values())).accuracy)} episodes, 95% interval):")
    for a, b, what in PAIRS:
        mean, ci = paired_ci(scores[a].accuracy, scores[b].accuracy)
        sign = "above 0" if mean - ci > 0 else "below 0" if mean + ci < 0 else "includes 0"
        print(f"    {a:<16} - {b:<18} {100 * mean:+6.2f} ± {100 * ci:.2f} ({sign})  {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--spread", action="store_true", help="also the shared-covariance rows (pooled source, target)")
    parser.add_argument("overrides", nargs="*", help="hydra overrides of conf/medmfg.yaml")
    args = parser.parse_args()
    print(f"before: {load()}; torch {torch.__version__}")
    cfg = compose("medmfg", *args.overrides)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    features = cached_features(cfg)
    model = generator_stage(cfg, features)
    ctx = make_context(features.source, features.source_labels, model, cfg)
    free_lunch = dataclasses.replace(ctx, dc_samples=FREE_LUNCH, _factors=ctx._factors)
    e = cfg.eval
    print(f"target: {len(features.target_classes)} classes, {len(features.target)} images; M = {ctx.samples}")
    for shots in e.shots:
        episodes = sample_episodes(features.target_labels.numpy(), e.ways, shots, e.queries, args.episodes, cfg.seed)
        seed = cfg.seed + shots
        scores = evaluate(METHODS + ABLATIONS, features.target, episodes, ctx, seed)
        scores[f"dc ({FREE_LUNCH}/class)"] = evaluate(["dc"], features.target, episodes, free_lunch, seed)["dc"]
        print(f"\n{e.ways}-way {shots}-shot, {args.episodes} episodes, {e.queries} queries (accuracy %, 95% interval):")
        for name, s in scores.items():
            mean, ci = mean_ci(s.accuracy)
            print(f"  {name:<20} {100 * mean:6.2f} ± {100 * ci:.2f}   {s.summary['ms_per_episode']:7.1f} ms/episode")
        for name, acc in oracles(features, cfg, episodes).items():
            gap = acc - 100 * scores["protonet"].accuracy.mean()
            print(f"  {name:<44} {acc:6.2f}  ({gap:+.2f} over protonet)")
        if args.spread:
            print("  one covariance shared by every class (pooled within-class), paired with medmfg:prototypes:")
            for name, acc in shared_spread(features, ctx, cfg, episodes).items():
                mean, ci = paired_ci(acc, scores["medmfg:prototypes"].accuracy)
                print(f"    {name:<52} {100 * acc.mean():6.2f}   {100 * mean:+6.2f} ± {100 * ci:.2f}")
        report(scores, shots)
        support = features.target[torch.from_numpy(np.stack([ep.support for ep in episodes[:50]]))]
        print(
            f"  generation time, {ctx.samples} features per class, {args.repeats} interleaved repeats of 50 episodes:"
        )
        print(f"    ratio medmfg / dc: {spread(generation_times(ctx, support, args.repeats))} (goal <= 2)")
    print(f"\nafter: {load()}")


if __name__ == "__main__":
    main()

"""MedMFG against ProtoNet, logistic regression and Free Lunch's distribution calibration on the offline cross-domain
task (natural source -> medical target, the embedded default's stages), and MedMFG's time per episode against DC's.

Goals (issue 11), in one run: in 5-way 1-shot MedMFG beats ProtoNet and logistic regression by >= 2 points with
non-overlapping 95% intervals, and is at least as good as DC; over 600 episodes on cached features, MedMFG's time per
episode against DC's as a ratio. DC runs twice: with Free Lunch's 750 samples per class and with MedMFG's M (an equal
budget of generated features, the embedded default's setting).

So that a busy machine cannot pass for a fast method: the load average and core count are printed before and after;
the two methods are timed in turn on the same 600 episodes (the order alternates every repeat), each repeat gives one
ratio, and the median and spread (min-max) of the ratios are reported.

Also printed, as a diagnosis rather than a method: what a perfect generator could add. The logistic regression is
trained on each prototype plus draws from the target classes' true pooled within-class covariance (an oracle: it uses
every target image), and, for comparison, from the source classes' covariance (what a generator trained on the source
can at best learn).

Usage: python bench/medmfg_episodes.py [--episodes 600] [--repeats 3] [hydra overrides of conf/medmfg.yaml ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

import methods.medmfg.__main__  # noqa: F401 - registers the methods
from common.bench import load, spread
from common.config import compose
from methods.medmfg.backbone import cached_features
from methods.medmfg.baselines import evaluate, make_context
from methods.medmfg.classifier import fit_predict
from methods.medmfg.commands import generator_stage
from methods.medmfg.episodes import mean_ci, sample_episodes
from methods.medmfg.generator import tukey, within_class_variance

FREE_LUNCH = 750
TABLE = ["protonet", "logreg", "tukey", "dc", "medmfg", "protonet+medmfg", "logreg+medmfg", "dc+medmfg"]


def interval(scores) -> tuple[float, float]:
    mean, ci = mean_ci(scores.accuracy)
    return 100 * mean, 100 * ci


def goals(scores: dict, dc_names: list[str]) -> None:
    m, m_ci = interval(scores["medmfg"])
    for base in ("protonet", "logreg"):
        b, b_ci = interval(scores[base])
        apart = m - m_ci > b + b_ci
        met = m - b >= 2 and apart
        print(
            f"  medmfg - {base} = {m - b:+.2f} points, intervals {'apart' if apart else 'overlap'} "
            f"(goal >= 2 and apart: {'met' if met else 'NOT met'})"
        )
    for name in dc_names:
        d, _ = interval(scores[name])
        print(f"  medmfg - {name} = {m - d:+.2f} points (goal >= 0: {'met' if m >= d else 'NOT met'})")


def oracle(features, cfg, episodes) -> dict[str, float]:
    """1-shot accuracy of a logistic regression on each prototype + M draws from a known covariance."""
    x, source = tukey(features.target, cfg.tukey_beta), tukey(features.source, cfg.tukey_beta)

    def pooled(f: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        means = torch.stack([f[labels == c].mean(0) for c in labels.unique(sorted=True)])
        r = f - means[labels]
        return r.T @ r / len(r)

    covs = {
        "true target covariance (oracle)": pooled(x, features.target_labels),
        "source covariance": pooled(source, features.source_labels),
        "isotropic, source variance": torch.eye(x.shape[1])
        * within_class_variance(source, features.source_labels).mean(),
    }
    support = torch.stack([x[torch.from_numpy(ep.support)] for ep in episodes])
    query = torch.stack([x[torch.from_numpy(ep.query.flatten())] for ep in episodes])
    e, n, _, d = support.shape
    m = cfg.generator.samples
    y = torch.cat([torch.arange(n), torch.arange(n).repeat_interleave(m)]).expand(e, -1)
    truth = torch.arange(n).repeat_interleave(episodes[0].query.shape[1])
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, cov in covs.items():
        factor = torch.linalg.cholesky(cov.double() + 1e-6 * torch.eye(d, dtype=torch.float64)).float()
        prototypes = support.mean(2)
        draws = prototypes.unsqueeze(2) + torch.randn(e, n, m, d, generator=g) @ factor.T
        train = torch.cat([prototypes, draws.flatten(1, 2)], 1)
        pred = fit_predict(train, y, query, n, cfg.eval.logreg_c, cfg.eval.logreg_iters)
        out[name] = 100 * (pred == truth).float().mean().item()
    return out


def time_pair(ctx_a, ctx_b, name_a, name_b, features, episodes, seed, repeats) -> list[float]:
    """Seconds per episode of method a / method b, one ratio per repeat, the order alternating."""
    ratios, t_a, t_b = [], [], []
    for r in range(repeats):
        pair = [(name_a, ctx_a, t_a), (name_b, ctx_b, t_b)]
        for name, ctx, times in pair if r % 2 == 0 else pair[::-1]:
            start = time.perf_counter()
            evaluate([name], features, episodes, ctx, seed)
            times.append((time.perf_counter() - start) / len(episodes))
        ratios.append(t_a[-1] / t_b[-1])
    print(f"    {name_a}: {spread([1000 * t for t in t_a], ' ms', 1)} per episode")
    print(f"    {name_b}: {spread([1000 * t for t in t_b], ' ms', 1)} per episode")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="hydra overrides of conf/medmfg.yaml")
    args = parser.parse_args()
    print(f"before: {load()}; torch {torch.__version__}")
    cfg = compose("medmfg", *args.overrides)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    print(f"torch threads: {torch.get_num_threads()}")
    features = cached_features(cfg)
    model = generator_stage(cfg, features)
    ctx = make_context(features.source, features.source_labels, model, cfg)
    free_lunch = dataclasses.replace(ctx, dc_samples=FREE_LUNCH, _factors=ctx._factors)
    m = cfg.generator.samples
    dc_names = [f"dc ({FREE_LUNCH}/class)", f"dc ({ctx.dc_samples}/class)"]
    labels = features.target_labels.numpy()
    e = cfg.eval
    for shots in e.shots:
        episodes = sample_episodes(labels, e.ways, shots, e.queries, args.episodes, cfg.seed)
        seed = cfg.seed + shots
        scores = evaluate(TABLE, features.target, episodes, ctx, seed)
        scores[dc_names[1]] = scores.pop("dc")
        scores[dc_names[0]] = evaluate(["dc"], features.target, episodes, free_lunch, seed)["dc"]
        print(f"\n{e.ways}-way {shots}-shot, {args.episodes} episodes, {e.queries} queries (accuracy %, 95% interval):")
        for name, s in scores.items():
            mean, ci = interval(s)
            print(f"  {name:<18} {mean:6.2f} ± {ci:.2f}   {s.summary['ms_per_episode']:7.1f} ms/episode")
        if shots == 1:
            goals(scores, dc_names)
            print(f"  what a perfect generator could add (logistic regression on prototype + {m} draws per class):")
            for name, acc in oracle(features, cfg, episodes).items():
                print(f"    draws from the {name}: {acc:.2f}")
        for dc_ctx, dc_name in ((free_lunch, dc_names[0]), (ctx, dc_names[1])):
            print(f"  time per episode, medmfg / {dc_name}, {args.repeats} interleaved repeats of {args.episodes}:")
            ratios = time_pair(ctx, dc_ctx, "medmfg", "dc", features.target, episodes, seed, args.repeats)
            print(f"    ratio medmfg / dc: {spread(ratios)}")
    print(f"\nafter: {load()}")


if __name__ == "__main__":
    main()

"""Commands of `python -m methods.medmfg`: pretrain, train, eval, tsne.

Stages are cached under cache_dir/medmfg/, each keyed by the settings that made it: backbone/ (pretrained on the
source), features/ (every source and target image, once), generator/ (MedMFG trained on source episodes). `train`
makes whichever are missing and then runs `eval`; `eval` and `tsne` use them and never train.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import torch

from common.checkpoint import load_module, save_module
from common.errors import UserError
from common.loggers import Logger, Prefixed, make_logger
from common.stages import run_stage, stage_path
from methods.medmfg.backbone import Features, cached_features, pretrained_backbone, source_accuracy
from methods.medmfg.baselines import episode_table, evaluate, make_context
from methods.medmfg.config import MedMFGConfig
from methods.medmfg.data import load_domain
from methods.medmfg.episodes import sample_episodes
from methods.medmfg.generator import MedMFG, train_generator, tukey


def _threads(cfg: MedMFGConfig) -> None:
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)


def pretrain(cfg: MedMFGConfig, run_dir: Path) -> dict[str, float]:
    _threads(cfg)
    logger = make_logger(cfg.logger, run_dir)
    pretrained_backbone(
        cfg, load_domain(cfg.data.source, "pretrain", cfg.data.source_layout), Prefixed(logger, "pretrain")
    )
    logger.finish()
    return {f"pretrain/{k}": v for k, v in source_accuracy(cfg).items()}


def generator_stage(cfg: MedMFGConfig, features: Features, logger: Logger | None = None, train: bool = True) -> MedMFG:
    """MedMFG trained on the source features (a stage); with train=False a missing one is an error."""
    g = cfg.generator
    path = stage_path(cfg.cache_dir, "medmfg/generator", features.key, cfg.tukey_beta, g, cfg.seed)
    if not train and not path.exists():
        raise UserError(f"no generator trained with these settings ({path}); run `train` with them first")

    def write(tmp: Path) -> None:
        work = path.with_name(path.name + ".work")  # the trainer's checkpoints: a killed run resumes
        source = tukey(features.source, cfg.tukey_beta)
        model = train_generator(source, features.source_labels.numpy(), g, cfg.seed, work, logger)
        kwargs = {"dim": source.shape[1], "reduction": g.reduction, "latent": g.latent, "hidden": g.hidden}
        kwargs["relative"] = g.relative
        save_module(model, tmp, "medmfg.generator", "medmfg", kwargs)
        shutil.rmtree(work, ignore_errors=True)

    run_stage("generator", path, write)
    return load_module(path)[0]


def run_episodes(cfg: MedMFGConfig, features: Features, model: MedMFG, run_dir: Path) -> dict[str, float]:
    """Every method on the same seeded episodes for each shot setting; episodes.csv holds each episode's accuracy."""
    e = cfg.eval
    ctx = make_context(features.source, features.source_labels, model, cfg)
    labels = features.target_labels.numpy()
    metrics: dict[str, float] = {"ways": float(e.ways)}
    rows = []
    for shots in e.shots:
        episodes = sample_episodes(labels, e.ways, shots, e.queries, e.episodes, cfg.seed)
        scores = evaluate(list(e.methods), features.target, episodes, ctx, cfg.seed + shots)
        for name, s in scores.items():
            metrics.update({f"{shots}shot/{name}/{k}": v for k, v in s.summary.items()})
            rows += [(shots, i, name, a) for i, a in enumerate(s.accuracy)]
        print(f"{e.ways}-way {shots}-shot: {e.episodes} episodes done")
    with (run_dir / "episodes.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("shots", "episode", "method", "accuracy"), *rows])
    return metrics


def train(cfg: MedMFGConfig, run_dir: Path) -> dict[str, float]:
    _threads(cfg)
    logger = make_logger(cfg.logger, run_dir)
    features = cached_features(cfg, Prefixed(logger, "pretrain"))
    model = generator_stage(cfg, features, Prefixed(logger, "generator"))
    logger.finish()
    print(
        f"features: {len(features.source)} source, {len(features.target)} target images, {features.source.shape[1]}-d"
    )
    metrics = {f"pretrain/{k}": v for k, v in source_accuracy(cfg).items()}
    return {**metrics, **run_episodes(cfg, features, model, run_dir)}


def eval(cfg: MedMFGConfig, run_dir: Path) -> dict[str, float]:  # noqa: A001 - the command is called eval
    _threads(cfg)
    features = cached_features(cfg, train=False)
    metrics = run_episodes(cfg, features, generator_stage(cfg, features, train=False), run_dir)
    print("\n" + episode_table(metrics))
    return metrics


def tsne(cfg: MedMFGConfig, run_dir: Path) -> dict[str, float]:
    from methods.medmfg.tsne import plot_tsne

    _threads(cfg)
    features = cached_features(cfg, train=False)
    model = generator_stage(cfg, features, train=False)
    out = run_dir / "tsne.png"
    metrics = plot_tsne(features, model, cfg, out)
    print(f"tsne: {out}")
    return metrics

"""`python -m methods.medmfg <command> [overrides]`; `<command> --help` lists what a command reads, writes and its keys."""

from common.cli import Command, Lazy, Method, main
from methods.medmfg.config import MedMFGConfig

STAGES = ("data", "backbone", "trainer", "tukey_beta", "generator", "cache_dir", "seed", "cpu_threads")
COMMANDS = {
    "pretrain": Command(
        Lazy("methods.medmfg.commands:pretrain"),
        "train the backbone on the source classes (a cached stage)",
        reads="data.source (offline: scikit-learn's digits and photo regions)",
        writes="cache_dir/medmfg/backbone/<key>/; metrics.csv",
        keys=("data.source", "data.image_size", "backbone", "trainer", "logger", "cache_dir", "seed", "cpu_threads"),
    ),
    "train": Command(
        Lazy("methods.medmfg.commands:train"),
        "pretrain, extract features, train MedMFG on source episodes, then the episode table for every method",
        reads="data.source, data.target (offline: scikit-image's medical images)",
        writes="cache_dir/medmfg/{backbone,features,generator}/<key>/; episodes.csv, metrics.csv",
        keys=(*STAGES, "dc", "eval", "logger"),
    ),
    "eval": Command(
        Lazy("methods.medmfg.commands:eval"),
        "the N-way K-shot episode table (accuracy ± 95% CI) of every method, on cached features and generator",
        reads="the stages `train` made with the same settings",
        writes="episodes.csv",
        keys=(*STAGES, "dc", "eval"),
    ),
    "tsne": Command(
        Lazy("methods.medmfg.commands:tsne"),
        "t-SNE plot of one episode's real target features against MedMFG's generated ones",
        reads="the stages `train` made with the same settings",
        writes="tsne.png",
        keys=(*STAGES, "tsne"),
    ),
}
METHOD = Method("medmfg", MedMFGConfig, COMMANDS, table=Lazy("methods.medmfg.baselines:episode_table"))

if __name__ == "__main__":
    main(METHOD)

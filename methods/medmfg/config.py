"""Settings of `python -m methods.medmfg`, declared once. The paper (arXiv 2310.09471) gives no numbers beyond its
abstract, so defaults follow the BSCD-FSL protocol (5-way, 15 queries, 600 episodes, ResNet-10 at 224 px) and Free
Lunch's distribution calibration where those apply, and otherwise our choices, each with its reason in README.md.
conf/medmfg.yaml holds only the embedded offline default's departures; conf/experiment/medmfg/ the real benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from common.config import PATH, BaseConfig, TrainerConfig, opt, section
from common.errors import UserError
from common.registry import declare
from methods.medmfg.bscd import LAYOUTS
from methods.medmfg.data import OFFLINE, check_counts, class_counts

# The methods compared (methods/medmfg/baselines.py registers each), all by default.
METHODS = ["protonet", "logreg", "tukey", "dc", "medmfg", "protonet+medmfg", "logreg+medmfg", "dc+medmfg"]
# MedMFG with one part switched off (the ablation; bench/medmfg_episodes.py, baselines.py).
ABLATIONS = ["medmfg:prototypes", "medmfg:noise", "medmfg:latent", "medmfg:uniform", "medmfg:centred"]
METHOD_KIND = declare("medmfg.method", METHODS + ABLATIONS, module="methods.medmfg.baselines")


@dataclass
class DataConfig:
    source: str = opt(
        OFFLINE,
        "source domain: offline (scikit-learn's digits + photo regions) or a dataset on disk (see source_layout)",
        choices=(OFFLINE,),
        exists=PATH,
    )
    target: str = opt(
        OFFLINE,
        "target domain: offline (crops of scikit-image's medical images) or a dataset on disk (see target_layout)",
        choices=(OFFLINE,),
        exists=PATH,
    )
    source_layout: str = opt(
        "auto",
        "how data.source is laid out: folder (<root>/<class>/<image>), isic2018, chestx, split_csv (miniImageNet's "
        "<split>.csv beside images/), or auto (recognised from what the path holds)",
        choices=LAYOUTS,
    )
    target_layout: str = opt("auto", "how data.target is laid out (as source_layout)", choices=LAYOUTS)
    image_size: int = opt(224, "side images are resized to (BSCD-FSL: 224)", ge=8)
    num_workers: int = opt(2, "DataLoader workers reading images while extracting features", ge=0, key=False)


@dataclass
class BackboneConfig:
    name: str = opt("resnet10t", "conv4 (Conv-4 of `width` channels) or a timm model name (BSCD-FSL: ResNet-10)")
    width: int = opt(64, "conv4: channels of each block, which is the feature width", ge=1)
    weights: str = opt(
        "random",
        "random, hub (timm's pretrained weights; needs the network) or a weights file (.safetensors/.pth)",
        choices=("random", "hub"),
        exists=PATH,
    )
    pretrain: bool = opt(True, "train on the source classes (the `trainer` section) before extracting features")
    batch_size: int = opt(128, "images per forward pass when extracting features or scoring", ge=1, key=False)

    def check(self) -> None:
        if self.name == "conv4" and self.weights != "random":
            raise UserError(f"config: backbone.weights={self.weights}: conv4 has no pretrained weights (use random)")


@dataclass
class GeneratorConfig:
    reduction: int = opt(4, "re-representation: the channel attention's hidden width = feature width / reduction", ge=1)
    latent: int = opt(32, "CVAE latent size", ge=1)
    hidden: int = opt(128, "CVAE encoder and decoder hidden width (128: generation within 2x DC's time, README)", ge=1)
    kl_weight: float = opt(1.0, "weight of the KL term of the CVAE loss", ge=0)
    proto_weight: float = opt(
        1.0, "weight of the queries' cross-entropy against re-represented prototypes (trains the attention)", ge=0
    )
    gen_weight: float = opt(
        1.0, "weight of the cross-entropy asking generated features to be nearest their own prototype", ge=0
    )
    samples: int = opt(100, "M: features generated per novel class", ge=1)
    relative: bool = opt(
        True, "condition the CVAE on prototypes relative to their episode's mean, not on where they lie (README)"
    )
    ways: int = opt(5, "classes of a source training episode", ge=2)
    max_shot: int = opt(5, "shots of a source training episode, drawn from 1..max_shot", ge=1)
    queries: int = opt(15, "queries per class of a source training episode (the CVAE's reconstruction targets)", ge=1)
    episodes: int = opt(8000, "source training episodes (one pass; steps = episodes / trainer.batch_size)", ge=1)
    trainer: TrainerConfig = section(
        TrainerConfig,
        "the generator's training on source episodes (re-representation + CVAE)",
        evaluates=(),
        transformers=False,
        batch_size=8,
        lr=1e-3,
        optimizer="adam",
        scheduler="cosine",
        log_every=50,
    )


@dataclass
class CalibrationConfig:
    k: int = opt(2, "nearest base-class statistics per support feature (Free Lunch: 2)", ge=1)
    alpha: float = opt(0.21, "added to every entry of the calibrated covariance, as Free Lunch's code (0.21)", ge=0)
    samples: int = opt(750, "features sampled per class, samples/K per support feature (Free Lunch: 750)", ge=1)


@dataclass
class EvalConfig:
    methods: List[str] = opt(METHODS, "methods on the same cached features and episodes", registry=METHOD_KIND)
    ways: int = opt(5, "N of N-way episodes", ge=2)
    shots: List[int] = opt([1, 5], "K of K-shot episodes, one table column each", ge=1)
    queries: int = opt(15, "query images per class (BSCD-FSL: 15)", ge=1)
    episodes: int = opt(600, "episodes per shot setting (BSCD-FSL: 600)", ge=1)
    logreg_c: float = opt(1.0, "inverse L2 strength of every logistic regression (scikit-learn's C)", gt=0)
    logreg_iters: int = opt(100, "L-BFGS iterations of a logistic regression", ge=1)


@dataclass
class TsneConfig:
    ways: int = opt(5, "classes shown", ge=2)
    shots: int = opt(1, "support images the prototypes (and the generated features) come from", ge=1)
    episode: int = opt(0, "which seeded episode supplies the support images", ge=0)
    samples: int = opt(50, "generated features shown per class", ge=1)
    perplexity: float = opt(30.0, "t-SNE perplexity", gt=0)


@dataclass
class MedMFGConfig(BaseConfig):
    trainer: TrainerConfig = section(
        TrainerConfig,
        "the backbone's pretraining on the source classes",
        evaluates=("source_val_acc",),  # backbone.py: accuracy on held-out source images
        transformers=False,
        epochs=100.0,
        batch_size=64,
        lr=1e-3,
        optimizer="adam",
        scheduler="cosine",
        log_every=50,
    )
    cpu_threads: Optional[int] = opt(
        None, "torch's CPU threads for the whole run; null: torch's default (all cores)", ge=1, key=False
    )
    tukey_beta: float = opt(
        0.5, "power transform sign(x)|x|^beta of the features tukey, dc and MedMFG work on (Free Lunch: 0.5)", gt=0
    )
    data: DataConfig = section(DataConfig, "the source and target domains")
    backbone: BackboneConfig = section(BackboneConfig, "the feature extractor")
    generator: GeneratorConfig = section(GeneratorConfig, "MedMFG: re-representation, CVAE and its training")
    dc: CalibrationConfig = section(CalibrationConfig, "Free Lunch distribution calibration (a baseline)")
    eval: EvalConfig = section(EvalConfig, "the episodes and the methods compared")
    tsne: TsneConfig = section(TsneConfig, "the t-SNE plot of real against generated features")

    def check(self) -> None:
        super().check()
        if self.backbone.name != "conv4" and not _is_timm(self.backbone.name):
            raise UserError(f"config: backbone.name='{self.backbone.name}': neither conv4 nor a timm model name")
        if _present(self.data.source):
            source, counts = class_counts(self.data.source, "source", self.data.source_layout)
            g = self.generator
            check_counts(source, counts, g.ways, g.max_shot + g.queries, "generator.ways/max_shot/queries")
            if self.dc.k > len(counts):
                raise UserError(f"config: dc.k={self.dc.k}: {source} has {len(counts)} classes")
        if _present(self.data.target):
            target, counts = class_counts(self.data.target, "target", self.data.target_layout)
            e, t = self.eval, self.tsne
            if not e.shots:
                raise UserError("config: eval.shots is empty (give at least one K, e.g. [1,5])")
            need = max(e.shots) + e.queries
            check_counts(target, counts, e.ways, need, f"eval.shots={max(e.shots)} + eval.queries")
            check_counts(target, counts, t.ways, t.shots, "tsne.ways/shots")


def _present(spec: str) -> bool:
    """The offline domains always are; a folder that does not exist is reported by the path check (or skipped when
    a preset is inspected without its files)."""
    return spec == OFFLINE or Path(spec).expanduser().exists()


def _is_timm(name: str) -> bool:
    import timm

    return timm.is_model(name)

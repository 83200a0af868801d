"""Settings of `python -m methods.m4`, declared once: defaults are the paper's (Bigyehahaha/M4 main.py +
scripts/M4-main.sh); conf/m4.yaml holds only the embedded synthetic demo's deviations, conf/experiment/m4/ the
presets, conf/m4/cohort/ the TCGA cohorts (`+m4/cohort=brca`). Tiling, extraction and the models receive these
sections as they are."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from common.config import PATH, BaseConfig, TrainerConfig, opt, section
from common.errors import UserError
from common.registry import declare

MODELS = declare("m4.model", ("m4", "mmoe", "amil"), module="methods.m4.model")  # registered there

SEGMENTS = 4  # M4's proxy segments (methods/m4/model.py): the hidden width must split into them
GEMMS = ("auto", "native", "onednn")  # CPU matrix products of M4's large layers (methods/m4/kernels.py)


@dataclass
class DataConfig:
    cohort: str = opt("synthetic", "a name for reports; +m4/cohort=<name> sets the paper's genes", key=False)
    slides_dir: Optional[str] = opt(
        None, "directory of the slides; null (and features_dir null): the synthetic cohort", exists=PATH
    )
    labels_csv: Optional[str] = opt(None, "labels: case_id, slide_id, <gene columns of 0/1>", exists=PATH)
    genes: List[str] = opt([], "gene columns to predict; empty: every column after case_id, slide_id")
    work_dir: Optional[str] = opt(
        None, "where patches/<key>/ and features/<backbone>-<key>/ go; null: beside the synthetic cohort"
    )
    features_dir: Optional[str] = opt(
        None, "h5_files/ + pt_files/ made elsewhere (CLAM, TRIDENT), used as they are", exists=PATH
    )
    slide_mpp: Optional[float] = opt(
        None, "microns per level-0 pixel for slides that record neither mpp nor objective power (a fallback)", gt=0
    )
    mpp_csv: Optional[str] = opt(
        None, "per-slide level-0 mpp, columns wsi,mpp (TRIDENT's); wins over what a slide records", exists=PATH
    )

    def check(self) -> None:
        if self.slides_dir and not (self.work_dir or self.features_dir):
            raise UserError("config: data.slides_dir is set but not data.work_dir (where patches/ and features/ go)")


@dataclass
class SyntheticConfig:
    n_patients: int = opt(
        96, "patients (some with two slides); ~20 test patients: fewer make per-gene AUCs swing", ge=5
    )
    genes: List[str] = opt(["TP53", "PIK3CA", "CDH1", "GATA3"], "genes, one visible texture trait each (at most 6)")
    height: int = opt(1024, "slide height in level-0 pixels at 0.5 mpp", ge=256)
    width: int = opt(1536, "slide width in level-0 pixels at 0.5 mpp", ge=256)
    seed: int = opt(0, "seed of the slides and their mutations")


@dataclass
class TileConfig:
    patch_size: int = opt(256, "patch side in pixels at the target resolution", ge=16)
    target_mpp: float = opt(0.5, "microns per pixel of the patches (0.5 = 20x)", gt=0)
    target_magnification: Optional[float] = opt(None, "e.g. 20 (mpp = 10 / magnification); overrides target_mpp", gt=0)
    overlap: int = opt(0, "overlap of neighbouring patches in pixels at the target resolution", ge=0)
    min_tissue: float = opt(0.5, "fraction of a patch that must be tissue", ge=0, le=1)
    seg_mpp: float = opt(8.0, "microns per pixel of the segmentation thumbnail", gt=0)
    thumbnail_max: int = opt(4096, "cap on the segmentation thumbnail's longest side", ge=64)
    min_saturation: float = opt(0.05, "floor on Otsu's saturation threshold (a blank slide keeps no noise)", ge=0, le=1)
    max_saturation: float = opt(
        0.15, "cap on Otsu's threshold (a slide with little glass is not split in two)", ge=0, le=1
    )
    min_hole_um2: float = opt(2500.0, "holes in tissue smaller than this (square microns) are filled", ge=0)
    min_speck_um2: float = opt(5000.0, "tissue specks smaller than this (square microns) are dropped", ge=0)
    pad_edges: bool = opt(False, "also cover the last partial row and column (CLAM's default); past the edge is white")

    def check(self) -> None:
        if self.overlap >= self.patch_size:
            raise UserError(
                f"config: tile.overlap={self.overlap} must be smaller than tile.patch_size={self.patch_size}"
            )


@dataclass
class ExtractConfig:
    backbone: str = opt(
        "retccl",
        "an encoder of methods/m4/encoders.py (retccl: the paper's, uni_v1, virchow2, ...), a timm name, or <name>_trunc",
    )
    weights: str = opt(
        "hub",
        "hub (the authors' hub weights), random, a local weights file or a Hugging Face snapshot folder",
        choices=("hub", "random"),
        exists=PATH,
    )
    allow_random_weights: bool = opt(
        False,
        "let weights=random run on real slides (meaningless features; the synthetic demo needs no flag)",
        key=False,
    )
    input_size: Optional[int] = opt(None, "side the patches are resized to; null: the encoder's native size", ge=16)
    batch_size: int = opt(64, "patches per backbone pass", ge=1, key=False)
    num_workers: Optional[int] = opt(
        None,
        "DataLoader workers reading patches; null: one per core (CUDA: but one), at most 8",
        ge=0,
        key=False,
    )
    device: str = opt("auto", "auto: cuda when available", choices=("auto", "cpu", "cuda"), key=False)
    streams: Optional[int] = opt(
        None, "CPU only: batches embedded at once, one thread each; null: one per core", ge=1, key=False
    )


@dataclass
class MilConfig:
    num_expert: int = opt(5, "experts of M4 and MMoE", ge=1)
    hidden: int = opt(512, "width of the experts' features (M4: a multiple of 4, one segment per proxy)", ge=SEGMENTS)
    batched_experts: bool = opt(True, "all M4 experts in one pass; false: one after another, as the official code")

    def check(self) -> None:
        if self.hidden % SEGMENTS:
            raise UserError(f"config: mil.hidden={self.hidden} must split into {SEGMENTS} proxy segments")


@dataclass
class TrainConfig:
    models: List[str] = opt(["m4", "mmoe", "amil"], "models to train (amil: once per gene)", registry=MODELS)
    protocol: str = opt(
        "official",
        "official: fixed test set + repeated train/val splits; kfold: stratified patient folds",
        choices=("official", "kfold"),
        trains=True,
    )
    n_splits: int = opt(5, "train/val splits (official) or folds (kfold)", ge=1, trains=True)
    test_size: float = opt(0.2, "official: fraction of patients held out for testing", gt=0, lt=1, trains=True)
    val_size: float = opt(0.2, "fraction of the remaining patients used for validation", gt=0, lt=1, trains=True)
    split_seed: int = opt(42, "seed of the patient splits", trains=True)
    stratify_gene: Optional[str] = opt(None, "kfold: the gene folds are stratified on; null: the rarest", trains=True)
    threshold: float = opt(0.5, "probability threshold of F1, accuracy, sensitivity and specificity", ge=0, le=1)
    pos_weight: Optional[str] = opt(
        None,
        "weight of positives in the BCE: null (official), balanced (negatives/positives per gene), or a number",
        trains=True,
    )
    cache_features: bool = opt(False, "keep bags in memory (small cohorts)", key=False)
    save_checkpoints: bool = opt(True, "per-epoch checkpoints for resume; the best weights are always kept", key=False)
    # Bags of a few dozen patches make ops so small that 2 OpenMP threads spend more time synchronising than
    # computing (measured: M4 step 31 ms with 1 thread vs 420 ms with 2 on a loaded 2-core VM).
    cpu_threads: Optional[int] = opt(
        None, "CPU intra-op threads while training; null: torch's default", ge=1, key=False
    )
    cpu_gemm: str = opt(
        "auto",
        "CPU float32 GEMM of the large layers: auto (the faster, timed once), native (PyTorch's BLAS), onednn",
        choices=GEMMS,
        key=False,
    )

    def check(self) -> None:
        if self.protocol == "kfold" and self.n_splits < 2:
            raise UserError(f"config: train.n_splits={self.n_splits}: kfold needs at least 2 folds")
        if self.pos_weight not in (None, "balanced") and not _positive(self.pos_weight):
            raise UserError(f"config: train.pos_weight={self.pos_weight}: null, balanced or a positive number")


def _positive(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


@dataclass
class EvalConfig:
    run_dir: Optional[str] = opt(None, "a train run dir; null: the latest under outputs/m4/train", exists=PATH)


@dataclass
class HeatmapConfig:
    run_dir: Optional[str] = opt(None, "a train run dir; null: the latest under outputs/m4/train", exists=PATH)
    model: str = opt("m4", "trained multi-gene model whose attention is shown (m4 or mmoe)", registry=MODELS)
    split: int = opt(0, "which split's model", ge=0)
    slides: List[str] = opt([], "slide ids; empty: the first max_slides test slides of the split")
    max_slides: int = opt(2, "test slides shown when slides is empty", ge=1)
    thumbnail_size: int = opt(1024, "longest side of the thumbnail in pixels", ge=64)


@dataclass
class M4Config(BaseConfig):
    # The official schedule: BCE per gene summed, Adam lr 1e-4 wd 4e-5, cosine to 0.1x over 32 epochs, one slide per
    # step, no gradient clipping.
    trainer: TrainerConfig = section(
        TrainerConfig,
        "the shared trainer",
        evaluates=("val_mean_auc",),  # train.py's validation score, which also picks the best epoch
        transformers=False,
        epochs=32.0,
        batch_size=1,
        lr=1e-4,
        weight_decay=4e-5,
        optimizer="adam",
        scheduler="cosine_with_min_lr",
        scheduler_kwargs={"min_lr_rate": 0.1},
        max_grad_norm=0.0,
    )
    data: DataConfig = section(DataConfig, "the cohort: slides, labels, where patches and features go", trains=True)
    synthetic: SyntheticConfig = section(
        SyntheticConfig, "the synthetic cohort used when no data is given", trains=True
    )
    tile: TileConfig = section(TileConfig, "tissue segmentation and the patch grid", trains=True)
    extract: ExtractConfig = section(ExtractConfig, "patch features", trains=True)
    mil: MilConfig = section(MilConfig, "the MIL architectures (M4, MMoE, ABMIL)", trains=True)
    train: TrainConfig = section(TrainConfig, "models, splits and metrics")
    eval: EvalConfig = section(EvalConfig, "re-scoring a train run")
    heatmap: HeatmapConfig = section(HeatmapConfig, "per-gene attention heatmaps")

    def check(self) -> None:
        super().check()
        d = self.data
        if d.cohort != "synthetic" and d.slides_dir is None and d.features_dir is None:
            raise UserError(f"config: cohort {d.cohort}: set data.slides_dir (+ data.work_dir) or data.features_dir")
        if d.cohort != "synthetic" and self.command in ("train", "eval") and d.labels_csv is None:
            raise UserError(f"config: cohort {d.cohort}: `{self.command}` needs data.labels_csv")
        e = self.extract
        # conf/m4.yaml's random backbone is the synthetic demo's; on real slides it must not carry over unnoticed
        # (`tile` makes no features; every other command extracts or reads features keyed by the encoder).
        real = d.slides_dir and not d.features_dir and self.command != "tile"
        if real and e.weights == "random" and not e.allow_random_weights:
            raise UserError(
                f"config: extract.weights=random (the synthetic demo's {e.backbone}) gives meaningless features on "
                "real slides: set extract.backbone and extract.weights to a pretrained encoder (e.g. "
                "extract.backbone=uni_v1 extract.weights=/models/uni extract.input_size=null; methods/m4/README.md, "
                "Encoders), or extract.allow_random_weights=true to insist"
            )

"""Config schema of `python -m methods.m4` (YAML: conf/m4.yaml, cohorts: conf/cohort/, presets: conf/experiment/m4/)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from common.config import BaseConfig


@dataclass
class DataConfig:
    cohort: str = "synthetic"  # a name for reports; conf/cohort/<name>.yaml sets the rest
    slides_dir: Optional[str] = None  # null: generate the synthetic cohort under <cache_dir>/m4/synthetic
    labels_csv: Optional[str] = None  # case_id, slide_id, <gene columns>
    genes: List[str] = field(default_factory=list)  # empty: every column after case_id, slide_id
    work_dir: Optional[str] = None  # patches/ and features/ go here; null: beside the synthetic cohort
    features_dir: Optional[str] = None  # h5_files/ + pt_files/ made elsewhere (CLAM, TRIDENT); null: <work_dir>/features/<backbone>
    slide_mpp: Optional[float] = None  # overrides the slides' own mpp (for files that lack it)


@dataclass
class SyntheticConfig:
    n_patients: int = 96
    genes: List[str] = field(default_factory=lambda: ["TP53", "PIK3CA", "CDH1", "GATA3"])
    height: int = 1024  # level-0 pixels at 0.5 mpp
    width: int = 1536
    seed: int = 0


@dataclass
class TileConfig:
    patch_size: int = 256
    target_mpp: float = 0.5
    target_magnification: Optional[float] = None  # e.g. 20 (mpp = 10 / magnification); overrides target_mpp
    overlap: int = 0
    min_tissue: float = 0.5
    seg_mpp: float = 8.0
    min_saturation: float = 0.05
    max_saturation: float = 0.15
    min_hole_um2: float = 2500.0
    min_speck_um2: float = 5000.0


@dataclass
class ExtractConfig:
    backbone: str = "resnet50_trunc"  # any timm name, <timm name>_trunc, or retccl (2048-d, as the paper)
    weights: str = "hub"  # hub | random | path to a local checkpoint
    allow_random_weights: bool = False
    input_size: int = 224
    batch_size: int = 64
    num_workers: int = 2
    device: str = "auto"


@dataclass
class ModelSpec:
    num_expert: int = 5
    hidden: int = 512
    batched_experts: bool = True  # all experts in one pass; false = one after another, as the official code


@dataclass
class TrainConfig:
    models: List[str] = field(default_factory=lambda: ["m4", "mmoe", "amil"])  # amil runs once per gene
    protocol: str = "official"  # official (fixed 20% test + repeated 80/20 train/val) | kfold
    n_splits: int = 5
    test_size: float = 0.2
    val_size: float = 0.2
    split_seed: int = 42
    stratify_gene: Optional[str] = None  # kfold: default the rarest gene
    threshold: float = 0.5
    cache_features: bool = False  # keep bags in memory (small cohorts)
    save_checkpoints: bool = True  # per-epoch checkpoints for resume; the best weights are always kept
    # CPU intra-op threads while training (null: torch's default). Bags of a few dozen patches make ops so small that
    # 2 OpenMP threads spend more time synchronising than computing (measured: M4 step 31 ms with 1 thread vs
    # 420 ms with 2 on a loaded 2-core VM).
    cpu_threads: Optional[int] = None


@dataclass
class EvalConfig:
    run_dir: Optional[str] = None  # a train run dir; null: the latest under outputs/m4/train


@dataclass
class HeatmapConfig:
    run_dir: Optional[str] = None  # a train run dir; null: the latest under outputs/m4/train
    model: str = "m4"
    split: int = 0
    slides: List[str] = field(default_factory=list)  # empty: the first max_slides test slides
    max_slides: int = 2
    thumbnail_size: int = 1024


@dataclass
class M4Config(BaseConfig):
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    tile: TileConfig = field(default_factory=TileConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    heatmap: HeatmapConfig = field(default_factory=HeatmapConfig)

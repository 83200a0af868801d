"""Settings of `python -m methods.dqmq`, declared once. The paper's own settings are unknown (only its abstract is at
hand), so the defaults are ours, chosen for the offline digits setting; conf/dqmq.yaml holds the embedded default's
departures, conf/experiment/dqmq/ the presets (CIFAR-10 ResNet-20)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from common.config import PATH, BaseConfig, TrainerConfig, opt, section
from common.errors import UserError
from common.registry import declare

NETS = declare("dqmq.net", ("digits_cnn", "resnet20", "resnet18", "mobilenetv2_100"), module="methods.dqmq.nets")

CORRUPTIONS = (
    "gaussian_noise",
    "gaussian_blur",
    "jpeg",
    "downsample",
    "contrast",
)  # as methods/dqmq/data.py (not imported:
METHODS = ("dqmq", "fp", "fixed", "static")  # the config module must not import the modules that build things)


@dataclass
class DataConfig:
    dataset: str = opt(
        "digits",
        "digits (scikit-learn's, offline), cifar10 / cifar100 (torchvision, from data.root), imagefolder",
        choices=("digits", "cifar10", "cifar100", "imagefolder"),
    )
    root: Optional[str] = opt(
        None, "cifar: the torchvision root (null: <data_dir>/<dataset>); imagefolder: a dir with train/ and val/"
    )
    download: bool = opt(False, "cifar: download into data.root when missing (needs the internet)", key=False)
    image_size: int = opt(16, "side the images are resized to (digits are 8 x 8, upsampled)", ge=4)
    test_fraction: float = opt(0.3, "digits: share held out for testing (stratified)", gt=0, lt=1)
    max_train: Optional[int] = opt(None, "use at most this many training images (a seeded subset)", ge=1)
    max_test: Optional[int] = opt(None, "use at most this many test images (a seeded subset)", ge=1)
    corruptions: List[str] = opt(
        ["gaussian_noise", "gaussian_blur", "downsample", "contrast"],
        "corruption types of the mixed-quality data (also: jpeg, which barely changes 16-px digits)",
        choices=CORRUPTIONS,
    )
    severities: List[int] = opt([1, 2, 3, 4, 5], "severities of every corruption", ge=1, le=5)
    clean_fraction: float = opt(
        0.2, "share of clean training samples; the rest spread evenly over corruption x severity", ge=0, le=1
    )
    augment: bool = opt(False, "random crop (4-px padding) and horizontal flip of training batches (CIFAR; not digits)")
    copies: int = opt(3, "training draws of every image, each at its own quality level", ge=1)
    heavy_severity: int = opt(4, "severities from this one up count as heavily corrupted in the tables", ge=1, le=5)

    def check(self) -> None:
        if not self.corruptions or not self.severities:
            raise UserError("config: data.corruptions and data.severities need at least one entry each")
        if self.dataset == "imagefolder" and not self.root:
            raise UserError("config: data.dataset=imagefolder needs data.root (a dir with train/ and val/)")
        if self.root and not self.download and not Path(self.root).expanduser().exists():
            raise UserError(f"config: data.root={self.root}: path does not exist")


@dataclass
class NetConfig:
    arch: str = opt("digits_cnn", "digits_cnn, resnet20 (CIFAR), resnet18 / mobilenetv2_100 (timm)", registry=NETS)
    width: int = opt(16, "digits_cnn / resnet20: channels of the first stage", ge=1)
    pretrained: bool = opt(False, "timm archs: start from timm's ImageNet weights (hub; needs the internet)")


@dataclass
class QuantConfig:
    bits: List[int] = opt([2, 3, 4, 6, 8], "candidate bit-widths of weights and activations (1-16)", ge=1, le=16)
    bit_bn: bool = opt(
        True,
        "DQMQ: one BatchNorm (statistics, affine) per weight/activation bit pair of the layer before it",
        trains=True,
    )

    def check(self) -> None:
        if not self.bits:
            raise UserError("config: quant.bits: the candidate set is empty; give at least one bit-width in 1-16")
        if len(set(self.bits)) != len(self.bits):
            raise UserError(f"config: quant.bits={self.bits}: a bit-width is listed twice")


@dataclass
class PolicyConfig:
    lam: float = opt(
        0.25, "lambda: weight of the expected BitOps (per sample, relative to W8A8) in the objective", ge=0
    )
    hidden: int = opt(32, "width of the quality encoder", ge=1)
    reward_hidden: int = opt(64, "width of the reward model", ge=1)
    tau_start: float = opt(
        0.5, "temperature (in units of loss) of the relaxed best choice at the start of the search", gt=0
    )
    tau_end: float = opt(0.01, "its temperature at the end of the search (annealed exponentially)", gt=0)
    warmup_fraction: float = opt(0.15, "share of steps on uniformly random bits before the policy learns", ge=0, lt=1)
    finetune_fraction: float = opt(
        0.25, "share of final steps with the policy frozen and its hard choices trained", ge=0, lt=1
    )
    explore: float = opt(0.1, "during the search, chance that a layer's bits are drawn uniformly", ge=0, le=1)

    def check(self) -> None:
        if self.warmup_fraction + self.finetune_fraction >= 1:
            raise UserError(
                f"config: policy.warmup_fraction + policy.finetune_fraction = "
                f"{self.warmup_fraction + self.finetune_fraction:g} leaves no steps for the policy search (must be < 1)"
            )


@dataclass
class StaticConfig:
    target_bitops: Optional[float] = opt(
        None, "BitOps budget relative to full precision; null: DQMQ's mean on the training data (same run)", gt=0, le=1
    )
    lam: float = opt(2.0, "weight of the penalty on expected BitOps above the budget during the search", ge=0)
    search_fraction: float = opt(0.5, "share of steps searching (EdMIPS's soft mix); the rest fine-tune", gt=0, lt=1)


@dataclass
class PretrainConfig:
    trainer: TrainerConfig = section(
        TrainerConfig,
        "training of the full-precision network every quantized one starts from (cached)",
        evaluates=(),
        transformers=False,
        lr=1e-3,
    )


@dataclass
class EvalConfig:
    run_dir: Optional[str] = opt(None, "a train run dir; null: the latest under outputs/dqmq/train", exists=PATH)
    bits_json: Optional[str] = opt(
        None,
        "an export's JSON: run each quality level at its exported bits instead of the model's own choice",
        exists=PATH,
    )
    batch_size: int = opt(512, "images per forward", ge=1, key=False)
    corrupted: Optional[str] = opt(
        None,
        "a published corruption benchmark to evaluate on as well: a CIFAR-10-C / CIFAR-100-C folder "
        "(<corruption>.npy, labels.npy) or an ImageNet-C root (<corruption>/<severity>/<class>/*.JPEG)",
        exists=PATH,
    )
    max_per_severity: Optional[int] = opt(None, "eval.corrupted: at most this many images per severity", ge=1)


@dataclass
class ExportConfig:
    run_dir: Optional[str] = opt(None, "a train run dir; null: the latest under outputs/dqmq/train", exists=PATH)
    method: str = opt("dqmq", "whose model: a method name of the run (dqmq, static, w8a8, fp: ONNX only, ...)")
    max_configs: int = opt(
        64, "DQMQ's ONNX export: at most this many configurations (the most frequent on the training data)", ge=1
    )


@dataclass
class DQMQConfig(BaseConfig):
    trainer: TrainerConfig = section(
        TrainerConfig,
        "training of every method from the full-precision network (QAT for the quantized ones)",
        evaluates=(),
        transformers=False,
        lr=1e-3,
    )
    method: str = opt("dqmq", "the method trained: dqmq, or a baseline fp | fixed | static", choices=METHODS)
    compare: List[str] = opt([], "more methods trained and evaluated in the same run", choices=METHODS)
    data: DataConfig = section(DataConfig, "the clean dataset and its mixed-quality copies", trains=True)
    net: NetConfig = section(NetConfig, "the network", trains=True)
    quant: QuantConfig = section(QuantConfig, "LSQ fake quantization", trains=True)
    fixed_bits: List[int] = opt([8, 4], "fixed: one WbAb run per entry", ge=1, le=16, trains=True)
    policy: PolicyConfig = section(PolicyConfig, "DQMQ's quality-aware bit policy and hybrid objective", trains=True)
    static: StaticConfig = section(
        StaticConfig, "static mixed precision (EdMIPS-style search), quality-agnostic", trains=True
    )
    pretrain: PretrainConfig = section(PretrainConfig, "the full-precision starting point", trains=True)
    eval: EvalConfig = section(EvalConfig, "evaluating a train run per quality level")
    export: ExportConfig = section(ExportConfig, "per-layer bit-widths per quality level as JSON, and the ONNX model")
    cpu_threads: Optional[int] = opt(None, "CPU intra-op threads; null: torch's default", ge=1, key=False)

    def check(self) -> None:
        super().check()
        d = self.data
        if d.dataset.startswith("cifar") and not d.download and self.command in ("train", "eval", "export"):
            root = Path(d.root or Path(self.data_dir) / d.dataset)
            if not root.exists():
                raise UserError(
                    f"config: {d.dataset} not found at {root} (data.root, default <data_dir>/{d.dataset}): put the "
                    "torchvision CIFAR folder there, or set data.download=true where the internet is reachable"
                )
        if not self.fixed_bits and "fixed" in self.methods():
            raise UserError("config: fixed_bits is empty but method fixed is trained")
        if "static" in self.methods() and self.static.target_bitops is None and "dqmq" not in self.methods():
            raise UserError(
                "config: static.target_bitops=null matches DQMQ's BitOps, but dqmq is not trained in this run: "
                "add dqmq to compare or set static.target_bitops"
            )

    def methods(self) -> list[str]:
        """The methods of a train run, DQMQ first (the static baseline matches its BitOps)."""
        wanted = [self.method, *self.compare]
        return [m for m in METHODS if m in wanted]

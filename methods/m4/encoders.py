"""Patch encoders by name (registry kind "m4.encoder"), each built the way its authors trained it.

An `EncoderSpec` holds the timm architecture and the model arguments of the authors' `config.json`, the layers a
config file cannot name (Virchow's and UNI2-h's SwiGLU MLP with SiLU), the hub id of the weights, the normalisation,
the native input size and how the embedding is read off the model. Names follow TRIDENT's `--patch_encoder`, so
features made by either tool carry the same name. Weights (`extract.weights`):

* a Hugging Face snapshot folder (with `config.json`) is loaded through timm's `local-dir:`, using the authors' own
  config; a folder without one, or a single .bin/.pth/.pt/.safetensors file, is loaded into the architecture built
  from the spec's model arguments, every tensor required;
* `hub` downloads them (most pathology encoders are gated: accept the terms and log in first); without a connection
  this fails at once, instead of huggingface_hub's minute of retries;
* `random` only for tests and the synthetic demo.

Any other timm name works as a plain encoder (timm's pretrained weights and normalisation), `<timm name>_trunc` as a
trunk cut after its third stage. Encoders outside timm (CONCH, Phikon, ...) are added with `register` (README).
"""

from __future__ import annotations

import logging
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.errors import UserError
from common.registry import get, names, register
from common.seeding import seeded
from methods.m4.config import ExtractConfig

log = logging.getLogger(__name__)

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))  # Bioptimus' H-optimus-0/1, H0-mini
LUNIT = ((0.70322989, 0.53606487, 0.66096631), (0.21716536, 0.26081574, 0.20723464))  # Lunit's benchmark-ssl


@dataclass
class Backbone:
    model: nn.Module  # [B, 3, S, S] normalised -> [B, dim]
    dim: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int  # side patches are resized to
    meta: dict[str, Any] = field(default_factory=dict)  # recorded with the features (h5 attributes)


@dataclass(frozen=True)
class EncoderSpec:
    arch: str  # timm architecture built for random weights or a single weights file
    model_args: dict[str, Any]  # the authors' config.json model_args (or what stands for them)
    hub: str | None = None  # timm name of the authors' weights (weights=hub); None: not on a hub
    swiglu: bool = False  # SwiGLUPacked MLP with SiLU, passed by the model card (config.json cannot name layers)
    norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # None: the timm model's pretrained_cfg
    input_size: int | None = None  # None: the timm model's pretrained_cfg
    embedding: str = "pooled"  # pooled | cls_mean (class token ++ mean of patch tokens) | stage3 (CLAM's trunc)

    def __call__(self, weights: str = "random", **overrides: Any) -> nn.Module:
        """The encoder module (embedding included) with its weights; what `create("m4.encoder", name)` returns."""
        return build_encoder(self, weights, **overrides)

    def layers(self) -> dict[str, Any]:
        if not self.swiglu:
            return {}
        from timm.layers import SwiGLUPacked

        return {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}


_VIRCHOW = {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "global_pool": "", "dynamic_img_size": True}
_HOPTIMUS = {"img_size": 224, "global_pool": "token", "init_values": 1e-5, "dynamic_img_size": False}
ENCODERS: dict[str, EncoderSpec] = {
    # The paper's: ResNet-50 with RetCCL's weights (Google Drive only), 256-px patches, 2048-d.
    "retccl": EncoderSpec("resnet50", {}, input_size=256, norm=IMAGENET),
    # CLAM's default: ImageNet ResNet-50 cut after stage 3, average-pooled, 1024-d.
    "resnet50_trunc": EncoderSpec(
        "resnet50.tv_in1k", {"features_only": True, "out_indices": (3,)}, "resnet50.tv_in1k", embedding="stage3"
    ),
    "uni_v1": EncoderSpec(
        "vit_large_patch16_224",
        {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True},
        "hf-hub:MahmoodLab/uni",
        norm=IMAGENET,
    ),
    "uni_v2": EncoderSpec(
        "vit_giant_patch14_224",
        {
            "img_size": 224,
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "init_values": 1e-5,
            "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2,
            "no_embed_class": True,
            "reg_tokens": 8,
            "dynamic_img_size": True,
        },
        "hf-hub:MahmoodLab/UNI2-h",
        swiglu=True,
        norm=IMAGENET,
    ),
    "virchow": EncoderSpec(
        "vit_huge_patch14_224", _VIRCHOW, "hf-hub:paige-ai/Virchow", True, IMAGENET, embedding="cls_mean"
    ),
    "virchow2": EncoderSpec(
        "vit_huge_patch14_224",
        {**_VIRCHOW, "reg_tokens": 4},
        "hf-hub:paige-ai/Virchow2",
        True,
        IMAGENET,
        embedding="cls_mean",
    ),
    # timm's DINOv2 giant already has the SwiGLU MLP these were trained with.
    "hoptimus0": EncoderSpec("vit_giant_patch14_reg4_dinov2", _HOPTIMUS, "hf-hub:bioptimus/H-optimus-0", norm=HOPTIMUS),
    "hoptimus1": EncoderSpec("vit_giant_patch14_reg4_dinov2", _HOPTIMUS, "hf-hub:bioptimus/H-optimus-1", norm=HOPTIMUS),
    "h0-mini": EncoderSpec(
        "vit_base_patch14_reg4_dinov2",
        {"img_size": 224, "global_pool": ""},
        "hf-hub:bioptimus/H0-mini",
        True,
        HOPTIMUS,
        embedding="cls_mean",
    ),
    "gigapath": EncoderSpec(
        "vit_giant_patch14_dinov2",
        {"img_size": 224, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24, "mlp_ratio": 5.33334},
        "hf-hub:prov-gigapath/prov-gigapath",
        norm=IMAGENET,
    ),
    "lunit-vits8": EncoderSpec(
        "vit_small_patch8_224", {"img_size": 224}, "hf-hub:1aurent/vit_small_patch8_224.lunit_dino", norm=LUNIT
    ),
}


class _TruncatedPool(nn.Module):
    """A timm trunk cut after its third stage, then global average pooling (CLAM's resnet50_trunc: 1024-d)."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)[-1].mean(dim=(2, 3))


class _ClassAndPatchMean(nn.Module):
    """Virchow's embedding: the class token next to the mean of the patch tokens (register tokens left out)."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit(x)  # global_pool="": [B, prefix + patches, D]
        return torch.cat([tokens[:, 0], tokens[:, self.vit.num_prefix_tokens :].mean(1)], dim=-1)


for _name, _spec in ENCODERS.items():
    register("m4.encoder", _name)(_spec)


def spec_of(name: str) -> EncoderSpec:
    """A registered encoder, or a plain timm name (`<name>_trunc`: cut after stage 3)."""
    if name in names("m4.encoder"):
        return get("m4.encoder", name)
    if name.endswith("_trunc"):
        arch = name.removesuffix("_trunc")
        return EncoderSpec(arch, {"features_only": True, "out_indices": (3,)}, arch, embedding="stage3")
    return EncoderSpec(name, {}, name)


def build_encoder(spec: EncoderSpec, weights: str = "random", **overrides: Any) -> nn.Module:
    """The encoder module, embedding included, with its weights: random, hub, or a local file or snapshot folder.
    `overrides` change model arguments of a random build (tests shrink the largest to depth=1)."""
    import timm

    kwargs = {**spec.layers(), **({} if spec.embedding == "stage3" else {"num_classes": 0})}
    try:
        if weights == "random":
            model = timm.create_model(spec.arch, pretrained=False, **{**spec.model_args, **kwargs, **overrides})
        elif weights == "hub":
            model = _from_hub(spec, kwargs)
        elif (Path(weights) / "config.json").is_file():
            model = timm.create_model(f"local-dir:{Path(weights).resolve()}", pretrained=True, **kwargs)
        else:
            model = timm.create_model(spec.arch, pretrained=False, **{**spec.model_args, **kwargs})
            _apply_weights(model, _weights_file(Path(weights)), spec.embedding == "stage3")
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise UserError(f"extract.backbone: unknown timm model '{spec.arch}'") from None
        if weights == "random":
            raise
        raise UserError(f"{weights}: the weights do not fit {spec.arch} ({' '.join(str(e).split())[:300]})") from None
    if spec.embedding == "stage3":
        return _TruncatedPool(model)
    return _ClassAndPatchMean(model) if spec.embedding == "cls_mean" else model


def _from_hub(spec: EncoderSpec, kwargs: dict[str, Any]) -> nn.Module:
    import timm
    from huggingface_hub import constants

    if spec.hub is None:
        raise UserError(f"{spec.arch}: these weights are not on a hub; set extract.weights=<local file>")
    # Without a connection huggingface_hub retries for about a minute; offline it fails at once (the cache still works).
    offline = constants.HF_HUB_OFFLINE or not _reachable(constants.ENDPOINT)
    before, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, offline
    # A hub model brings its own config.json; a timm name needs the spec's arguments (features_only, ...).
    args = kwargs if spec.hub.startswith("hf-hub:") else {**spec.model_args, **kwargs}
    try:
        return timm.create_model(spec.hub, pretrained=True, **args)
    except OSError as e:
        where = "the hub is unreachable and they are not cached" if offline else str(e).splitlines()[0][:200]
        raise UserError(
            f"cannot fetch the weights of {spec.hub} ({where}); download them once (gated models: accept their "
            "terms, `hf auth login`) and set extract.weights=<weights file or snapshot folder>"
        ) from None
    finally:
        constants.HF_HUB_OFFLINE = before


def _reachable(endpoint: str) -> bool:
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
    except OSError:
        return False
    return True


def _weights_file(path: Path) -> Path:
    """A weights file, or the one in a snapshot folder without config.json."""
    if path.is_dir():
        found = [p for n in ("model.safetensors", "pytorch_model.bin") if (p := path / n).is_file()]
        found += sorted(p for ext in ("*.safetensors", "*.bin", "*.pth", "*.pt") for p in path.glob(ext))
        if not found:
            raise UserError(f"{path}: no config.json and no weights file (.safetensors, .bin, .pth, .pt)")
        return found[0]
    if not path.is_file():
        raise UserError(f"{path}: backbone weights file not found")
    return path


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - pickled code objects, a truncated file, ...
            raise UserError(
                f"{path}: cannot load weights safely ({type(e).__name__}: {str(e).splitlines()[0]})"
            ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state dict, found {type(state).__name__}")
    return {k.removeprefix("module.").removeprefix("encoder."): v for k, v in state.items()}


def _apply_weights(model: nn.Module, path: Path, truncated: bool) -> None:
    """Load a local checkpoint, ignoring classifier heads (RetCCL keeps a 128-d `fc`); every trunk tensor must fit."""
    state = {k: v for k, v in _load_state_dict(path).items() if not k.startswith(("fc.", "head.", "classifier."))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise UserError(f"{path}: weights miss {len(missing)} backbone tensors (e.g. {', '.join(missing[:3])})")
    if truncated:
        unexpected = [k for k in unexpected if not k.startswith("layer4.")]  # the truncated trunk drops layer4
    if unexpected:
        log.warning(
            "%s: %d tensors not used by the backbone (e.g. %s)", path, len(unexpected), ", ".join(unexpected[:3])
        )


def _inner(model: nn.Module) -> nn.Module:
    """The timm model inside our embedding wrappers."""
    inner = model.trunk if isinstance(model, _TruncatedPool) else model
    return inner.vit if isinstance(inner, _ClassAndPatchMean) else inner


def _native_size(model: nn.Module, spec: EncoderSpec) -> int:
    """The spec's, else a ViT's own image size (its model arguments may differ from its pretrained_cfg: DINOv2 giant
    is registered at 518 px, H-optimus built at 224), else timm's pretrained_cfg."""
    inner = _inner(model)
    vit_size = getattr(getattr(inner, "patch_embed", None), "img_size", None)
    cfg_size = (getattr(inner, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))[-1]
    return int(spec.input_size or (vit_size[0] if vit_size else cfg_size))


def _norm(model: nn.Module, spec: EncoderSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if spec.norm:
        return spec.norm
    cfg = getattr(_inner(model), "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET[0])), tuple(cfg.get("std", IMAGENET[1]))


def build_backbone(cfg: ExtractConfig, allow_random: bool = False, **overrides: Any) -> Backbone:
    """The encoder of `extract.backbone` with `extract.weights`, its feature width probed at the input size it will
    get (its native size unless extract.input_size says otherwise). `allow_random`: the synthetic demo's."""
    name, weights = cfg.backbone, cfg.weights
    if weights == "random" and not (cfg.allow_random_weights or allow_random):
        raise UserError(
            "extract.weights=random gives meaningless features; set extract.allow_random_weights=true to insist"
        )
    if name == "retccl" and weights == "hub":
        raise UserError(
            "RetCCL weights are not on a hub: download them (github.com/Xiyue-Wang/RetCCL) and set extract.weights=<file>"
        )
    spec = spec_of(name)
    # Random weights stand in for a published encoder: drawn from a fixed seed, so that features cached under the
    # extract settings are the ones a fresh extraction gives, whatever the run's seed or what it drew before.
    with seeded(0, f"m4/backbone/{name}"):
        model = spec(weights, **overrides).eval()
    if weights == "random":
        warnings.warn(
            f"extract: backbone '{name}' has RANDOM weights; use this only for tests and the synthetic demo",
            stacklevel=2,
        )
    native = _native_size(model, spec)
    size = cfg.input_size or native
    try:
        with torch.inference_mode():
            dim = int(model(torch.zeros(1, 3, size, size)).shape[-1])
    except (RuntimeError, AssertionError) as e:  # a fixed-size ViT given another size
        if size == native:
            raise
        raise UserError(
            f"extract.input_size={size}: {name} takes {native}-px inputs ({str(e).splitlines()[0][:120]}); "
            f"set extract.input_size={native} or null"
        ) from None
    if size != native and weights != "random":
        # conf/m4.yaml's demo size (112) would otherwise carry over to a pretrained encoder unnoticed.
        warnings.warn(
            f"extract: {name} gets {size}-px patches, not the {native} px it was trained on "
            "(extract.input_size=null uses its own)",
            stacklevel=2,
        )
    mean, std = _norm(model, spec)
    meta = {"encoder": name, "weights": str(weights), "feature_dim": dim, "input_size": size, "mean": mean, "std": std}
    return Backbone(model, dim, mean, std, size, {**meta, "embedding": spec.embedding})

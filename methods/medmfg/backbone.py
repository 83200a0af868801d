"""The feature extractor: built by name (conv4, or any timm model), trained on the source classes with the shared
trainer, then run once over every source and target image. Its features are cached, keyed by everything that made
them, so the generator's training and 600 evaluation episodes per setting never run the backbone again.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import load_module, read_meta, save_module
from common.errors import UserError
from common.io import write_json
from common.loggers import Logger
from common.registry import register
from common.stages import run_stage, stage_path
from methods.medmfg.config import MedMFGConfig
from methods.medmfg.data import OFFLINE, OFFLINE_VERSION, Domain, load_domain

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@register("medmfg.backbone", "conv4")
def conv4(width: int = 64) -> nn.Module:
    """Four conv3x3-BN-ReLU-maxpool blocks and global average pooling: the few-shot literature's Conv-4."""
    blocks: list[nn.Module] = []
    channels = 3
    for _ in range(4):
        blocks += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
        channels = width
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())


@register("medmfg.backbone", "timm")
def timm_model(name: str, weights: str = "random") -> nn.Module:
    """A timm model without its classifier (pooled features); weights: random, hub or a local file."""
    import timm

    if not timm.is_model(name):
        raise UserError(f"backbone.name: '{name}' is neither conv4 nor a timm model")
    model = timm.create_model(name, pretrained=weights == "hub", num_classes=0)
    if weights not in ("random", "hub"):
        _load_weights(model, Path(weights))
    return model


def _load_weights(model: nn.Module, path: Path) -> None:
    """A state dict from .safetensors or a torch file (tensors only); a classifier in it is ignored."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state))
    missing, _ = model.load_state_dict(state, strict=False)
    if missing:
        raise UserError(f"backbone.weights={path}: {len(missing)} backbone tensors missing (e.g. {missing[:3]})")


def build(cfg: MedMFGConfig) -> tuple[nn.Module, str, dict]:
    """(module, registry name, arguments that rebuild its architecture) of the configured backbone. The saved
    weights replace the initial ones on loading, so a timm model is rebuilt without fetching hub weights again."""
    b = cfg.backbone
    if b.name == "conv4":
        return conv4(b.width), "conv4", {"width": b.width}
    return timm_model(b.name, b.weights), "timm", {"name": b.name}


# ---------------------------------------------------------------------------------------------------------------------
# Images to tensors


def to_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """H x W x 3 uint8 -> 3 x size x size, ImageNet-normalised (bilinear resize, antialiased when shrinking)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255)
    x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in IMAGENET)
    return (x - mean) / std


class Images(torch.utils.data.Dataset):
    """(tensor, label) of a domain's images; offline images are converted once and kept. An unreadable file gives its
    error message in place of the tensor, so that it reaches the main process as one line (see `collate`)."""

    def __init__(self, domain: Domain, indices: np.ndarray, size: int):
        self.domain, self.indices, self.size = domain, indices, size
        self.kept = [to_tensor(domain.image(i), size) for i in indices] if domain.arrays else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[torch.Tensor | str, int]:
        if self.kept is not None:
            return self.kept[j], int(self.domain.labels[self.indices[j]])
        try:
            x: torch.Tensor | str = to_tensor(self.domain.image(self.indices[j]), self.size)
        except UserError as e:
            x = str(e)
        return x, int(self.domain.labels[self.indices[j]])


def collate(batch: list[tuple[torch.Tensor | str, int]]) -> tuple[torch.Tensor, torch.Tensor] | str:
    """A batch, or the message of its first unreadable image (raised by `checked` in the main process)."""
    errors = [x for x, _ in batch if isinstance(x, str)]
    if errors:
        return errors[0]
    return torch.stack([x for x, _ in batch]), torch.tensor([y for _, y in batch])  # type: ignore[misc]


def checked(batch: tuple[torch.Tensor, torch.Tensor] | str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, str):
        raise UserError(batch)
    return batch


def augment(x: torch.Tensor) -> torch.Tensor:
    """Random horizontal flips and shifts of up to 1/8 of the side (reflect-padded): the usual few-shot pretraining
    augmentation, on the batch."""
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    pad = max(1, x.shape[-1] // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2,)).tolist()
    return padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


# ---------------------------------------------------------------------------------------------------------------------
# Stages


def _split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every 10th image of each class is held out to report the backbone's source accuracy."""
    held = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        held[np.where(labels == c)[0][::10]] = True
    return np.where(~held)[0], np.where(held)[0]


def _domain_key(spec: str, domain: Domain) -> object:
    """What identifies a domain's images: the offline cut's version, or the dataset's file listing."""
    return [spec, OFFLINE_VERSION] if spec == OFFLINE else [spec, domain.classes, domain.ids]


def backbone_path(cfg: MedMFGConfig, source: Domain) -> Path:
    train = cfg.trainer if cfg.backbone.pretrain else None
    parts = (_domain_key(cfg.data.source, source), cfg.data.image_size, cfg.backbone, train, cfg.seed)
    return stage_path(cfg.cache_dir, "medmfg/backbone", *parts)


def pretrained_backbone(cfg: MedMFGConfig, source: Domain, logger: Logger | None = None) -> Path:
    """The backbone trained on the source classes (a stage: made once per setting); returns its directory, whose
    model.json records the held-out source accuracy."""
    from common.seeding import seeded
    from common.trainer import Task, fit

    path = backbone_path(cfg, source)

    def write(tmp: Path) -> None:
        with seeded(cfg.seed, "medmfg/backbone"):  # its weights and training draw from the seed alone
            pretrain(tmp)

    def pretrain(tmp: Path) -> None:
        model, name, kwargs = build(cfg)
        metrics: dict[str, float] = {}
        if cfg.backbone.pretrain:
            train_idx, val_idx = _split(source.labels)
            size, batch = cfg.data.image_size, cfg.backbone.batch_size
            classifier = nn.Sequential(model, nn.Linear(_width(model, size), len(source.classes)))
            val = Images(source, val_idx, size)
            task = Task(
                classifier,
                Images(source, train_idx, size),
                collate,
                loss=_pretrain_loss,
                evaluate=lambda m: {"source_val_acc": _accuracy(m, val, batch)},
            )
            # Checkpoints go beside the stage, keyed like it, so a killed pretraining resumes; removed once done.
            work = path.with_name(path.name + ".work")
            metrics = fit(task, cfg.trainer, work, logger).metrics
            shutil.rmtree(work, ignore_errors=True)
        save_module(model, tmp, "medmfg.backbone", name, kwargs, metrics=metrics)

    return run_stage("backbone", path, write)


def _pretrain_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor] | str) -> tuple[torch.Tensor, dict]:
    x, y = checked(batch)
    return F.cross_entropy(model(augment(x)), y), {}


def _accuracy(model: nn.Module, data: Images, batch_size: int) -> float:
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(data), batch_size):
        x, y = checked(collate([data[j] for j in range(start, min(start + batch_size, len(data)))]))
        correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
    return correct / len(data)


def _width(model: nn.Module, size: int) -> int:
    was = model.training
    with torch.no_grad():
        width = model.eval()(torch.zeros(2, 3, size, size)).shape[1]
    model.train(was)
    return width


def extract(model: nn.Module, domain: Domain, size: int, batch_size: int, workers: int) -> torch.Tensor:
    """Features of every image of a domain, in order (eval mode, no augmentation; on the GPU when there is one)."""
    data = Images(domain, np.arange(len(domain.labels)), size)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    with torch.no_grad():
        return torch.cat([model(checked(batch)[0].to(device)).float().cpu() for batch in loader])


@dataclass
class Features:
    """Backbone features of every source and target image, with their labels and class names."""

    source: torch.Tensor  # [n_source, d]
    source_labels: torch.Tensor
    source_classes: list[str]
    target: torch.Tensor  # [n_target, d]
    target_labels: torch.Tensor
    target_classes: list[str]
    key: str  # the features directory's name: a key of everything upstream, for the stages that use them


def cached_features(cfg: MedMFGConfig, logger: Logger | None = None, train: bool = True) -> Features:
    """Source and target features (stages: backbone, then features). With train=False a missing backbone is an
    error instead of a pretraining run."""
    from safetensors.torch import load_file, save_file

    pretraining, source, target = (
        load_domain(cfg.data.source, "pretrain", cfg.data.source_layout),
        load_domain(cfg.data.source, "source", cfg.data.source_layout),
        load_domain(cfg.data.target, "target", cfg.data.target_layout),
    )
    if not train and not backbone_path(cfg, pretraining).exists():
        raise UserError(
            f"no backbone trained with these settings ({backbone_path(cfg, pretraining)}); run `train` first"
        )
    backbone_dir = pretrained_backbone(cfg, pretraining, logger)
    path = stage_path(cfg.cache_dir, "medmfg/features", backbone_dir.name, _domain_key(cfg.data.target, target))

    def write(tmp: Path) -> None:
        model, _ = load_module(backbone_dir)
        b, size, workers = cfg.backbone, cfg.data.image_size, cfg.data.num_workers
        tmp.mkdir()
        tensors = {
            "source": extract(model, source, size, b.batch_size, workers),
            "source_labels": torch.from_numpy(source.labels),
            "target": extract(model, target, size, b.batch_size, workers),
            "target_labels": torch.from_numpy(target.labels),
        }
        save_file(tensors, tmp / "features.safetensors")
        write_json(tmp / "classes.json", {"source": source.classes, "target": target.classes, "ids": target.ids})

    run_stage("features", path, write)
    t = load_file(path / "features.safetensors")
    names = json.loads((path / "classes.json").read_text())
    return Features(
        t["source"], t["source_labels"], names["source"], t["target"], t["target_labels"], names["target"], path.name
    )


def source_accuracy(cfg: MedMFGConfig) -> dict[str, float]:
    """The held-out source accuracy recorded with the trained backbone."""
    return read_meta(backbone_path(cfg, load_domain(cfg.data.source, "pretrain", cfg.data.source_layout))).get(
        "metrics", {}
    )

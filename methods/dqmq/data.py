"""Mixed-quality image data: a clean dataset (sklearn digits, CIFAR-10/100 from a local torchvision root, or an
ImageFolder), and corrupted copies of it at severities 1-5 of Gaussian noise, Gaussian blur, JPEG and downsampling.

Every sample carries its true quality level (`clean` or corruption x severity) for reporting only: the models see the
pixels, never the tag. Corruptions use torchvision.transforms.v2 (gaussian_noise, gaussian_blur, jpeg, resize); their
parameters are fixed per severity and the noise is drawn from a generator seeded per (seed, split, sample), so a
dataset is the same on every run with the same seed. Corrupted images are rounded back to 8 bits, as saved images are.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from common.errors import UserError

CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "jpeg", "downsample", "contrast")
# Our severity scales (the paper's are not known). Noise: sigma on [0, 1] pixels. Blur: sigma in pixels.
# JPEG: quality (ImageNet-C's, the mildest raised from 25). Downsampling: the factor of a down-then-up resize.
# Contrast: ImageNet-C's factors c, pixels pulled to the image's mean, (x - mean) c + mean: the corruption that low
# activation bits cannot resolve (at c = 0.05 a digit spans 13 of 256 grey levels, under one 4-bit step).
# Noise and blur reach further than our first tables, ImageNet-C's noise sigmas (0.08 .. 0.38) and blur 0.5 .. 2.0 px:
# with those the corrupted levels were 4.7-5.7 points below clean at full precision (blur-5 still at 0.95), too
# close to tell a quality-aware allocation from a quality-blind one. The table is part of every stage key
# (`severity_key`).
SEVERITY = {
    "gaussian_noise": (0.12, 0.18, 0.26, 0.36, 0.5),
    "gaussian_blur": (0.8, 1.2, 1.6, 2.2, 3.0),
    "jpeg": (30, 20, 15, 10, 7),
    "downsample": (1.5, 2.0, 3.0, 4.0, 6.0),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
}
SPLITS = {"train": 0, "test": 1}


def severity_key(corruptions: list[str]) -> dict[str, tuple]:
    """The severity parameters of the corruptions a run uses: a stage made under another table is not reused."""
    return {c: SEVERITY[c] for c in corruptions}


@dataclass(frozen=True)
class Level:
    corruption: str  # "clean" or one of CORRUPTIONS
    severity: int = 0  # 1-5; 0 for clean

    @property
    def name(self) -> str:
        return self.corruption if self.corruption == "clean" else f"{self.corruption}-{self.severity}"


def quality_levels(corruptions: list[str], severities: list[int]) -> list[Level]:
    """Clean first, then every corruption at every severity: the index of a level in this list is its tag."""
    return [Level("clean")] + [Level(c, s) for c in corruptions for s in sorted(severities)]


def sample_seed(seed: int, split: str, index: int) -> int:
    return int(np.random.SeedSequence([seed, SPLITS[split], index]).generate_state(1)[0])


def corrupt(image: torch.Tensor, level: Level, seed: int) -> torch.Tensor:
    """A uint8 [C, H, W] image at `level`; the noise (the only random corruption) is drawn with `seed`."""
    if level.corruption == "clean":
        return image
    p = SEVERITY[level.corruption][level.severity - 1]
    side = image.shape[-1]
    if level.corruption == "gaussian_noise":
        with torch.random.fork_rng(devices=[]):  # v2's noise draws from the global generator: seed it locally
            torch.manual_seed(seed)
            noisy = TF.gaussian_noise(TF.to_dtype(image, torch.float32, scale=True), sigma=p, clip=True)
        return TF.to_dtype(noisy, torch.uint8, scale=True)
    if level.corruption == "gaussian_blur":
        k = min(2 * math.ceil(3 * p) + 1, side - 1 + side % 2)
        return TF.gaussian_blur(image, [k, k], [p, p])
    if level.corruption == "jpeg":
        return TF.jpeg(image, int(p))
    if level.corruption == "contrast":
        x = image.float()
        mean = x.mean((-3, -2, -1), keepdim=True)
        return ((x - mean) * p + mean).round().clamp(0, 255).to(torch.uint8)
    small = max(2, round(side / p))
    size = list(image.shape[-2:])
    return TF.resize(TF.resize(image, [small, small], antialias=True), size, antialias=False)


# ---------------------------------------------------------------------------------------------------------------------
# Clean datasets, as uint8 tensors [N, C, S, S]


@dataclass
class Images:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return x if x.shape[-1] == size and x.shape[-2] == size else TF.resize(x, [size, size], antialias=True)


def _digits(image_size: int, test_fraction: float, seed: int) -> Images:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(np.round(d.images / 16 * 255)).to(torch.uint8)[:, None]
    y = torch.from_numpy(d.target).long()
    tr, te = train_test_split(np.arange(len(y)), test_size=test_fraction, stratify=d.target, random_state=seed)
    x = _resize(x, image_size)
    return Images(x[tr], y[tr], x[te], y[te], [str(c) for c in d.target_names])


# CIFAR's python release: pickled dicts of byte keys; the only objects they hold are numpy arrays.
_CIFAR = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
        b"labels",
        b"label_names",
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", b"fine_labels", b"fine_label_names"),
}
# numpy's array rebuilders, and _codecs.encode, which protocol-2 pickles written by Python 3 use for bytes.
_CIFAR_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR's batches hold (dicts, lists, bytes, numpy arrays): no other class is built."""

    def find_class(self, module: str, name: str):
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR batch")


def _cifar_batch(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return _CifarUnpickler(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise UserError(f"{path}: not a CIFAR python batch ({e})") from None


def _cifar(name: str, root: Path, image_size: int, download: bool) -> Images:
    """CIFAR-10/100 from torchvision's folder (the python release, `cifar-10-batches-py/` or `cifar-100-python/`
    under data.root), read here without torchvision's md5 checks: data uint8 [N, 3072] (R, G, B planes of 32 x 32),
    labels, and the class names of the meta file."""
    folder, train_files, test_files, meta_file, label_key, names_key = _CIFAR[name]
    if download and not (root / folder).is_dir():
        from torchvision import datasets

        (datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100)(str(root), train=True, download=True)
    base = root / folder if (root / folder).is_dir() else root
    if not (base / meta_file).is_file():
        raise UserError(
            f"data.root={root}: {name} not found (no {folder}/{meta_file}); put torchvision's CIFAR folder there or "
            "set data.download=true where the internet is reachable"
        )

    def split(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for f in files:
            batch = _cifar_batch(base / f)
            data, labels = np.asarray(batch.get(b"data")), batch.get(label_key)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels or []) != len(data):
                raise UserError(
                    f"{base / f}: 'data' {data.dtype} {list(data.shape)} with {len(labels or [])} "
                    f"'{label_key.decode()}'; expected uint8 [N, 3072] and N labels"
                )
            xs.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
            ys.append(torch.tensor(labels, dtype=torch.long))
        return _resize(torch.cat(xs), image_size), torch.cat(ys)

    classes = [c.decode() for c in _cifar_batch(base / meta_file)[names_key]]
    return Images(*split(train_files), *split(test_files), classes)


def _read_folder(folder: Path, image_size: int, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of an ImageFolder split at image_size (RGB); unreadable files are skipped and listed, not fatal."""
    from torchvision.datasets import ImageFolder
    from torchvision.io import ImageReadMode, decode_image

    ds = ImageFolder(str(folder), loader=lambda p: p)
    if ds.classes != classes:
        raise UserError(f"{folder}: class folders {ds.classes} differ from the training split's {classes}")
    images, labels, bad = [], [], []
    for path, label in ds.samples:
        try:
            images.append(_resize(decode_image(path, mode=ImageReadMode.RGB), image_size))
            labels.append(label)
        except (RuntimeError, ValueError) as e:
            bad.append(f"{path} ({str(e).splitlines()[0][:80]})")
    if bad:
        warnings.warn(f"{folder}: skipped {len(bad)} unreadable image(s): {'; '.join(bad[:5])}", stacklevel=2)
    if not images:
        raise UserError(f"{folder}: no readable images")
    return torch.stack(images), torch.tensor(labels)


def check_image_folder(root: Path) -> tuple[Path, list[str]]:
    """(the test split, the classes) of an ImageFolder data.root, checked from its file listing (no image decoded):
    train/ and val/ (or test/), the same class folders in both, at least two, each with an image file that
    torchvision's ImageFolder would read (an empty one is otherwise its traceback, and one class trains to
    accuracy 1.0)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

    test_dir = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise UserError(f"data.root={root}: an ImageFolder needs train/ and val/ (or test/) with one folder per class")
    classes: list[str] = []
    for split in (root / "train", test_dir):
        found = find_classes(str(split))[0] if any(d.is_dir() for d in split.iterdir()) else []
        if split.name != "train" and found != classes:
            raise UserError(f"{split}: class folders {found} differ from the training split's {classes}")
        if len(found) < 2:
            raise UserError(
                f"{split}: {len(found)} class folder(s) ({', '.join(found) or 'none'}); a classifier needs at least 2"
            )
        for name in found:
            files = (f for _, _, names in os.walk(split / name, followlinks=True) for f in names)
            if not any(f.lower().endswith(IMG_EXTENSIONS) for f in files):
                raise UserError(f"{split / name}: class folder without an image ({', '.join(IMG_EXTENSIONS)})")
        classes = found
    return test_dir, classes


def _image_folder(root: Path, image_size: int) -> Images:
    test_dir, classes = check_image_folder(root)
    return Images(
        *_read_folder(root / "train", image_size, classes), *_read_folder(test_dir, image_size, classes), classes
    )


def _subset(x: torch.Tensor, y: torch.Tensor, limit: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if limit is None or limit >= len(y):
        return x, y
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:limit]
    return x[keep], y[keep]


def load_images(cfg, data_dir: str, seed: int) -> Images:
    """The clean train and test images of `cfg` (the `data` section) as uint8 tensors."""
    if cfg.dataset == "digits":
        images = _digits(cfg.image_size, cfg.test_fraction, seed)
    elif cfg.dataset in ("cifar10", "cifar100"):
        images = _cifar(cfg.dataset, Path(cfg.root or Path(data_dir) / cfg.dataset), cfg.image_size, cfg.download)
    else:
        images = _image_folder(Path(cfg.root), cfg.image_size)
    images.train_x, images.train_y = _subset(images.train_x, images.train_y, cfg.max_train, seed)
    images.test_x, images.test_y = _subset(images.test_x, images.test_y, cfg.max_test, seed + 1)
    return images


# ---------------------------------------------------------------------------------------------------------------------
# Mixed-quality sets


class MixedQuality(torch.utils.data.Dataset):
    """`copies` draws of every image, each at a quality level drawn with `weights`: (uint8 [C, H, W], label, level
    index). Corrupted on access, deterministically (per-sample seeds)."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        levels: list[Level],
        weights: list[float],
        copies: int,
        seed: int,
        split: str = "train",
    ):
        self.x, self.y, self.levels, self.seed, self.split = x, y, levels, seed, split
        rng = np.random.default_rng([seed, SPLITS[split]])
        self.level_of = torch.from_numpy(rng.choice(len(levels), size=copies * len(y), p=np.asarray(weights)))

    def __len__(self) -> int:
        return len(self.level_of)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        j, level = i % len(self.y), int(self.level_of[i])
        return corrupt(self.x[j], self.levels[level], sample_seed(self.seed, self.split, i)), int(self.y[j]), level


def mixture_weights(levels: list[Level], clean_fraction: float) -> list[float]:
    """Clean with `clean_fraction`, the rest spread evenly over the corrupted levels."""
    rest = len(levels) - 1
    if rest == 0:
        return [1.0]
    return [clean_fraction] + [(1 - clean_fraction) / rest] * rest


def at_level(x: torch.Tensor, level: Level, seed: int, split: str = "test") -> torch.Tensor:
    """Every image of x (uint8 [N, C, H, W]) at one quality level, as floats in [0, 1]."""
    out = torch.stack([corrupt(img, level, sample_seed(seed, split, i)) for i, img in enumerate(x)])
    return TF.to_dtype(out, torch.float32, scale=True)


def collate(items: list[tuple[torch.Tensor, int, int]], augment: bool = False) -> dict[str, torch.Tensor]:
    """A batch {x: float [N, C, H, W] in [0, 1], y, level}; `augment`: the usual CIFAR random crop (4-px zero padding)
    and horizontal flip, after the corruption."""
    xs, ys, levels = zip(*items, strict=True)
    x = TF.to_dtype(torch.stack(xs), torch.float32, scale=True)
    if augment:
        side = x.shape[-1]
        padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
        dx, dy = torch.randint(0, 9, (2, len(x))).tolist()
        x = torch.stack([p[:, i : i + side, j : j + side] for p, i, j in zip(padded, dy, dx, strict=True)])
        x = torch.where(torch.rand(len(x), 1, 1, 1) < 0.5, x.flip(-1), x)
    return {"x": x, "y": torch.tensor(ys), "level": torch.tensor(levels)}

"""The published corruption benchmarks as evaluation inputs, read in their released layouts (Hendrycks & Dietterich,
ICLR 2019):

- CIFAR-10-C / CIFAR-100-C: a folder of `<corruption>.npy`, each a uint8 array [N, 32, 32, 3] (N = 50,000 in the
  release: the 10,000 test images at severity 1, then 2, ..., 5, in that order), and `labels.npy` ([N], the labels
  of the same rows);
- ImageNet-C: `<corruption>/<severity>/<class folder>/*.JPEG`, severities 1-5, the class folders (WordNet ids) those
  of the training ImageFolder.

`read_sets` yields (corruption, severity, images uint8 [n, C, S, S], labels) resized to the model's input side.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError
from methods.dqmq.data import _read_folder

SEVERITIES = 5


def detect(root: Path) -> str:
    """cifar_c when the folder holds labels.npy, imagenet_c when it holds <corruption>/<1-5>/ folders."""
    if (root / "labels.npy").is_file():
        return "cifar_c"
    if any((d / "1").is_dir() for d in root.iterdir() if d.is_dir()):
        return "imagenet_c"
    raise UserError(
        f"eval.corrupted={root}: neither CIFAR-10-C (<corruption>.npy and labels.npy) nor ImageNet-C "
        "(<corruption>/<severity>/<class>/*.JPEG)"
    )


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable .npy array ({str(e).splitlines()[0]})") from None


def _cifar_c(root: Path, image_size: int, limit: int | None) -> Iterator[tuple[str, int, torch.Tensor, torch.Tensor]]:
    from methods.dqmq.data import _resize

    labels = _load(root / "labels.npy")
    if labels.ndim != 1 or len(labels) % SEVERITIES:
        raise UserError(f"{root / 'labels.npy'}: shape {labels.shape}; expected [N] with N a multiple of 5")
    per = len(labels) // SEVERITIES
    files = sorted(p for p in root.glob("*.npy") if p.name != "labels.npy")
    if not files:
        raise UserError(f"eval.corrupted={root}: no <corruption>.npy beside labels.npy")
    for path in files:
        arr = _load(path)
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != len(labels) or arr.shape[-1] != 3:
            raise UserError(
                f"{path}: {arr.dtype} {list(arr.shape)}; expected uint8 [{len(labels)}, H, W, 3] (rows as labels.npy)"
            )
        for severity in range(1, SEVERITIES + 1):
            rows = slice((severity - 1) * per, (severity - 1) * per + min(per, limit or per))
            x = torch.from_numpy(np.array(arr[rows])).permute(0, 3, 1, 2)  # a copy: the memmap is read-only
            yield path.stem, severity, _resize(x, image_size), torch.from_numpy(labels[rows].astype(np.int64))


def _imagenet_c(root: Path, image_size: int, classes: list[str], limit: int | None):
    for corruption in sorted(d for d in root.iterdir() if d.is_dir()):
        for severity in range(1, SEVERITIES + 1):
            folder = corruption / str(severity)
            if not folder.is_dir():
                raise UserError(f"{folder}: missing (ImageNet-C has severities 1-5 under every corruption)")
            x, y = _read_folder(folder, image_size, classes)
            yield corruption.name, severity, x[:limit], y[:limit]


def read_sets(root: str | Path, image_size: int, classes: list[str], limit: int | None = None):
    """Every (corruption, severity, images, labels) of a corruption benchmark folder (see the module's doc); at most
    `limit` images per severity (the first ones)."""
    root = Path(root)
    kind = detect(root)
    if kind == "cifar_c":
        for name, severity, x, y in _cifar_c(root, image_size, limit):
            if int(y.max()) >= len(classes) or int(y.min()) < 0:
                raise UserError(f"{root / 'labels.npy'}: labels outside 0-{len(classes) - 1} (the model's classes)")
            yield name, severity, x, y
    else:
        yield from _imagenet_c(root, image_size, classes, limit)


def mean_corruption_table(rows: list[dict]) -> str:
    """Per method: one row per corruption, accuracy at severities 1-5 and their mean, then the mean corruption
    accuracy (mCA, the mean over corruptions and severities)."""
    from common.results import markdown_table

    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        body = []
        for c in dict.fromkeys(r["corruption"] for r in mine):
            accs = [r["acc"] for r in sorted((r for r in mine if r["corruption"] == c), key=lambda r: r["severity"])]
            body.append([c, *(f"{a:.4f}" for a in accs), f"{np.mean(accs):.4f}"])
        body.append(["mCA", *[""] * SEVERITIES, f"{np.mean([r['acc'] for r in mine]):.4f}"])
        out.append(f"{method}\n\n" + markdown_table(["corruption", *map(str, range(1, 6)), "mean"], body))
    return "\n\n".join(out)

"""The two domains of a cross-domain few-shot run: a source the backbone and the generator learn from, and a target
whose classes are only ever seen a few images at a time.

Each is `offline` (built from images that installed packages ship, so the embedded default needs no download) or an
ImageFolder root, `<root>/<class>/<image>`, as BSCD-FSL's ISIC, ChestX, EuroSAT and CropDisease and BreakHis are laid
out once unpacked (data/README.md of the repo lists where they come from).

* offline source (natural images): scikit-learn's 1,797 handwritten digits (10 classes) and the 3 x 4 regions of its
  two photos (china.jpg, flower.jpg) that are not flat (pixel std >= 20; the two of clear sky are left out): 22
  classes of 63 overlapping 32-px patches (roofs, trees, lake, petals, leaves, ...).
* offline target (medical images), scikit-image's bundled images cut into non-overlapping patches, 6 classes:
  fundus patches with many and with few vessels (retina(), at half resolution, inside the field of view, the top and
  bottom thirds by black top-hat response of the green channel), immunohistochemistry patches rich and poor in DAB
  stain (top and bottom thirds by the DAB channel of a colour deconvolution), the textured half of cell() and the 36
  16-px patches of microaneurysms().

Images are read only when needed (`Domain.image(i)`), so a folder of 10,000 dermoscopy images costs a file listing
until features are extracted.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import UserError

OFFLINE = "offline"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# Images per class of the offline domains, written out so that a config is checked without building them (scikit-learn
# and scikit-image are slow to import); tests/medmfg/test_data.py checks them against the domains built.
OFFLINE_COUNTS = {
    "source": {
        **{f"digit_{d}": n for d, n in enumerate((178, 182, 177, 183, 181, 182, 181, 179, 174, 180))},
        **{f"china_r{r}c{c}": 63 for r in range(3) for c in range(4) if (r, c) not in ((0, 2), (0, 3))},
        **{f"flower_r{r}c{c}": 63 for r in range(3) for c in range(4)},
    },
    "target": {
        "retina_vessels": 110,
        "retina_background": 110,
        "ihc_dab": 85,
        "ihc_hematoxylin": 85,
        "cell": 170,
        "microaneurysms": 36,
    },
}


@dataclass
class Domain:
    name: str  # "offline source", or the folder
    classes: list[str]
    labels: np.ndarray  # [n] class index of each image
    ids: list[str]  # a file path, or <class>/<n> for an offline patch
    arrays: list[np.ndarray] = field(default_factory=list)  # offline images in memory (H x W x 3 uint8)

    def image(self, i: int) -> np.ndarray:
        """Image i as H x W x 3 uint8; an unreadable file is a UserError naming it."""
        if self.arrays:
            return self.arrays[i]
        from PIL import Image

        try:
            with Image.open(self.ids[i]) as im:
                return np.array(im.convert("RGB"))
        except OSError as e:
            raise UserError(f"{self.ids[i]}: cannot read image ({e})") from None

    def counts(self) -> dict[str, int]:
        found = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, found, strict=True)}


def load_domain(spec: str, role: str) -> Domain:
    """`offline` or an ImageFolder root; role is "source" or "target" (which offline domain)."""
    if spec == OFFLINE:
        return offline_source() if role == "source" else offline_target()
    return image_folder(spec)


def class_counts(spec: str, role: str) -> tuple[str, dict[str, int]]:
    """(the domain's name, images per class), read off the file listing (or OFFLINE_COUNTS): cheap enough to check a
    config with."""
    if spec == OFFLINE:
        return f"offline {role}", dict(OFFLINE_COUNTS[role])
    domain = image_folder(spec)
    return domain.name, domain.counts()


def check_counts(domain: str, counts: dict[str, int], ways: int, need: int, setting: str) -> None:
    """Enough classes for N-way episodes, each with at least K + Q images (counts: images per class of `domain`)."""
    if ways > len(counts):
        raise UserError(f"config: {setting}: {ways}-way episodes, but {domain} has {len(counts)} classes")
    for name, n in counts.items():
        if n < need:
            raise UserError(f"{domain}: class '{name}' has {n} images, fewer than K+Q={need} that {setting} needs")


# ---------------------------------------------------------------------------------------------------------------------
# ImageFolder


def image_folder(root: str) -> Domain:
    """<root>/<class>/<image>, classes in sorted order; errors name the folder that is missing or empty. Listed anew
    at every call (a folder may change between runs; a listing of 10,000 files takes milliseconds)."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserError(f"{root}: folder not found (expected an ImageFolder root: <root>/<class>/<image>)")
    class_dirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise UserError(f"{root}: no class folders (expected an ImageFolder root: <root>/<class>/<image>)")
    classes, labels, ids = [], [], []
    for d in class_dirs:
        files = sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        classes.append(d.name)
        labels += [len(classes) - 1] * len(files)
        ids += [str(f) for f in files]
    if not ids:
        raise UserError(
            f"{root}: no images in its {len(classes)} class folders (suffixes: {', '.join(IMAGE_SUFFIXES)})"
        )
    return Domain(str(root), classes, np.asarray(labels, dtype=np.int64), ids)


# ---------------------------------------------------------------------------------------------------------------------
# Offline domains


def _grid(image: np.ndarray, size: int, stride: int) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Patches of `size` px every `stride` px (top-left corners), row by row."""
    h, w = image.shape[:2]
    corners = [(y, x) for y in range(0, h - size + 1, stride) for x in range(0, w - size + 1, stride)]
    return [image[y : y + size, x : x + size] for y, x in corners], corners


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _split_by_score(patches: list[np.ndarray], scores: np.ndarray, high: str, low: str) -> dict[str, list[np.ndarray]]:
    """The top and bottom thirds of patches by score as two classes (the ambiguous middle third is left out)."""
    order = np.argsort(scores, kind="stable")
    third = len(order) // 3
    return {high: [patches[i] for i in order[-third:]], low: [patches[i] for i in order[:third]]}


def _from_classes(name: str, per_class: dict[str, list[np.ndarray]]) -> Domain:
    classes, labels, ids, arrays = [], [], [], []
    for c, images in per_class.items():
        classes.append(c)
        labels += [len(classes) - 1] * len(images)
        ids += [f"{c}/{i}" for i in range(len(images))]
        arrays += [np.ascontiguousarray(im, dtype=np.uint8) for im in images]
    return Domain(name, classes, np.asarray(labels, dtype=np.int64), ids, arrays)


@functools.lru_cache(maxsize=1)
def offline_source() -> Domain:
    from sklearn.datasets import load_digits, load_sample_images

    digits = load_digits()
    per_class: dict[str, list[np.ndarray]] = {}
    for d in range(10):
        images = digits.images[digits.target == d]
        per_class[f"digit_{d}"] = [_rgb((im * 255 / 16).round().astype(np.uint8)) for im in images]
    photos = load_sample_images()
    for photo, file in zip(photos.images, photos.filenames, strict=True):
        stem = Path(file).stem
        h, w = photo.shape[0] // 3, photo.shape[1] // 4
        for r in range(3):
            for c in range(4):
                region = photo[r * h : (r + 1) * h, c * w : (c + 1) * w]
                if region.std() >= 20:
                    per_class[f"{stem}_r{r}c{c}"] = _grid(region, 32, 16)[0]
    return _from_classes("offline source", per_class)


@functools.lru_cache(maxsize=1)
def offline_target() -> Domain:
    import skimage.data
    from skimage.color import rgb2hed
    from skimage.morphology import black_tophat, disk
    from skimage.transform import downscale_local_mean

    per_class: dict[str, list[np.ndarray]] = {}

    retina = downscale_local_mean(skimage.data.retina(), (2, 2, 1)).round().astype(np.uint8)
    green = retina[..., 1]
    vessels = black_tophat(green, disk(5)).astype(np.float64)
    patches, corners = _grid(retina, 32, 32)
    # Inside the field of view: no black border pixels in the patch.
    inside = [i for i, p in enumerate(patches) if p.max(axis=2).min() > 20]
    scores = np.array([vessels[y : y + 32, x : x + 32].mean() for y, x in (corners[i] for i in inside)])
    per_class.update(_split_by_score([patches[i] for i in inside], scores, "retina_vessels", "retina_background"))

    ihc = skimage.data.immunohistochemistry()
    dab = rgb2hed(ihc)[..., 2]
    patches, corners = _grid(ihc, 32, 32)
    scores = np.array([dab[y : y + 32, x : x + 32].mean() for y, x in corners])
    per_class.update(_split_by_score(patches, scores, "ihc_dab", "ihc_hematoxylin"))

    cell = skimage.data.cell()
    patches, _ = _grid(cell, 32, 32)
    texture = np.array([p.std() for p in patches])
    per_class["cell"] = [_rgb(p) for p, s in zip(patches, texture, strict=True) if s >= np.median(texture)]

    per_class["microaneurysms"] = [_rgb(p) for p in _grid(skimage.data.microaneurysms(), 16, 16)[0]]
    return _from_classes("offline target", per_class)

"""The two domains of a cross-domain few-shot run: a source the backbone and the generator learn from, and a target
whose classes are only ever seen a few images at a time.

Each is `offline` (built from images that installed packages ship, so the embedded default needs no download) or a
dataset on disk as it is published (`bscd.py`: class folders, ISIC 2018's and ChestX-ray8's CSV files, miniImageNet's
split files).

The offline pair is built so that few-shot is hard and the domains differ, with a fixed seed (`DATA_SEED`: it is a
data set, not a run's draw). Every image of both goes through one draw of the same `nuisance` family (orientation
and sensor noise), as acquisitions vary in any domain, so one image says little about its class. The backbone is
trained on the source images without the noise (`offline_source(acquired=False)`), as an ImageNet backbone is, so its
features spread with the noise; the generator learns that spread from the noisy source images.

* offline source (natural images): scikit-learn's 1,797 handwritten digits (10 classes) and the 3 x 4 regions of its
  two photos (china.jpg, flower.jpg) that are not flat (pixel std >= 20; the two of clear sky are left out): 22
  classes of 63 overlapping 32-px patches (roofs, trees, lake, petals, leaves, ...).
* offline target (medical images): 28 classes of 60 random 32-px crops, each class one region of one of
  scikit-image's medical images: 9 regions of a 5 x 5 grid over the fundus photo retina() at half resolution (those
  inside the field of view), 16 of a 4 x 4 grid over the immunohistochemistry slide, and 3 of a 4 x 3 grid over
  cell() (the textured ones). Neighbouring regions of one image look alike: the classes are fine-grained.

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
# Raised whenever the offline domains' images change, so that stages made from the old ones are not reused.
OFFLINE_VERSION = 3
NOISE_STD = 40.0  # the largest per-image std of the acquisition noise (`nuisance`), in 0-255 pixel units
DATA_SEED = 2310  # the offline domains are fixed data sets: their crops and nuisance draws do not follow the run seed
TARGET_PER_CLASS = 60  # crops per offline target class
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
        **{f"retina_r{r}c{c}": TARGET_PER_CLASS for r in (1, 2, 3) for c in (1, 2, 3)},
        **{f"ihc_r{r}c{c}": TARGET_PER_CLASS for r in range(4) for c in range(4)},
        **{f"cell_r{r}c{c}": TARGET_PER_CLASS for r, c in ((1, 2), (2, 1), (2, 2))},
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


def load_domain(spec: str, role: str, layout: str = "auto") -> Domain:
    """`offline` or a dataset on disk in one of `bscd.LAYOUTS`; role is "source", "pretrain" (the images the backbone
    is trained on: the offline source without its acquisition noise, a dataset's source as it is) or "target"."""
    if spec == OFFLINE:
        return offline_target() if role == "target" else offline_source(acquired=role == "source")
    from methods.medmfg import bscd  # it builds on this module's Domain

    return bscd.read(spec, layout)


def class_counts(spec: str, role: str, layout: str = "auto") -> tuple[str, dict[str, int]]:
    """(the domain's name, images per class), read off the file listing (or OFFLINE_COUNTS): cheap enough to check a
    config with."""
    if spec == OFFLINE:
        return f"offline {role}", dict(OFFLINE_COUNTS[role])
    domain = load_domain(spec, role, layout)
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


def orientation(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A rotation by a multiple of 90 degrees and a flip: how a patch lies carries no class."""
    x = np.rot90(image, int(rng.integers(4)))
    return x[:, ::-1] if rng.random() < 0.5 else x


def nuisance(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw of what varies between acquisitions and carries no class: the orientation and the sensor's noise
    (Gaussian, its std drawn per image in [0, NOISE_STD], as dose and exposure vary between scans). The same family
    is applied to source and target images, as acquisitions vary in either domain. Measured on the offline default's
    features (README): of the families tried (noise, exposure gain, brightness, contrast, colour gain, blur), noise
    leaves the most to know about how a class spreads; colour and brightness are confounded with what tells these
    classes apart, so whitening them away recovers little."""
    x = orientation(image, rng).astype(np.float64)
    x = x + rng.normal(0, rng.uniform(0, NOISE_STD), x.shape)
    return np.clip(x, 0, 255).round().astype(np.uint8)


def _regions(image: np.ndarray, rows: int, cols: int) -> list[tuple[int, int, np.ndarray]]:
    h, w = image.shape[0] // rows, image.shape[1] // cols
    return [(r, c, image[r * h : (r + 1) * h, c * w : (c + 1) * w]) for r in range(rows) for c in range(cols)]


def _crops(region: np.ndarray, n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """n crops of `size` px at random places of a region, each under its own nuisance draw."""
    ys = rng.integers(0, region.shape[0] - size + 1, n)
    xs = rng.integers(0, region.shape[1] - size + 1, n)
    return [nuisance(region[y : y + size, x : x + size], rng) for y, x in zip(ys, xs, strict=True)]


@functools.lru_cache(maxsize=2)
def offline_source(acquired: bool = True) -> Domain:
    """The source images under the acquisition nuisance (acquired), or only re-oriented: the backbone's pretraining
    set, clean as an ImageNet backbone's images are of scanner noise, so its features are not invariant to it."""
    from sklearn.datasets import load_digits, load_sample_images

    rng = np.random.default_rng(DATA_SEED)
    nuisance_ = nuisance if acquired else orientation
    digits = load_digits()
    per_class: dict[str, list[np.ndarray]] = {}
    for d in range(10):
        images = digits.images[digits.target == d]
        per_class[f"digit_{d}"] = [nuisance_(_rgb((im * 255 / 16).round().astype(np.uint8)), rng) for im in images]
    photos = load_sample_images()
    for photo, file in zip(photos.images, photos.filenames, strict=True):
        stem = Path(file).stem
        for r, c, region in _regions(photo, 3, 4):
            if region.std() >= 20:
                per_class[f"{stem}_r{r}c{c}"] = [nuisance_(p, rng) for p in _grid(region, 32, 16)[0]]
    return _from_classes("offline source" if acquired else "offline source (pretraining)", per_class)


@functools.lru_cache(maxsize=1)
def offline_target() -> Domain:
    import skimage.data
    from skimage.transform import downscale_local_mean

    rng = np.random.default_rng(DATA_SEED + 1)
    per_class: dict[str, list[np.ndarray]] = {}
    retina = downscale_local_mean(skimage.data.retina(), (2, 2, 1)).round().astype(np.uint8)
    for r, c, region in _regions(retina, 5, 5):
        if (region.max(axis=2) > 20).mean() >= 0.98:  # inside the field of view
            per_class[f"retina_r{r}c{c}"] = _crops(region, TARGET_PER_CLASS, 32, rng)
    for r, c, region in _regions(skimage.data.immunohistochemistry(), 4, 4):
        per_class[f"ihc_r{r}c{c}"] = _crops(region, TARGET_PER_CLASS, 32, rng)
    for r, c, region in _regions(_rgb(skimage.data.cell()), 4, 3):
        if region.std() >= 8:  # not the flat background
            per_class[f"cell_r{r}c{c}"] = _crops(region, TARGET_PER_CLASS, 32, rng)
    return _from_classes("offline target", per_class)

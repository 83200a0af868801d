"""Tissue segmentation and a patch grid at a target resolution, saved as CLAM-compatible coordinate HDF5 files.

Segmentation runs on a low-resolution thumbnail: Otsu's threshold on HSV saturation (glass is unsaturated, stained
tissue is not), then holes and specks smaller than given areas are removed. The grid is laid out in level-0 pixels at
the target resolution (default 256 px at 0.5 mpp, i.e. 20x): on a 40x slide a patch spans 512 level-0 pixels and is
read from the level whose downsample is closest to 2 without being coarser, then resized if needed.

`coords` in `patches/<slide>.h5` are level-0 top-left (x, y); its attributes follow CLAM (patch_size, patch_level,
downsample, downsampled_level_dim, level_dim, name, save_path) plus TRIDENT-style ones (patch_size_level0, target_mpp,
level0_mpp, target_magnification, level0_magnification) and `target_patch_size`, the size patches are resized to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from common.errors import UserError
from common.io import atomic_write
from methods.m4.config import TileConfig

SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm")


@dataclass(frozen=True)
class ReadPlan:
    """How to read one patch: a square of `read_size` px at `level`, covering `size_level0` level-0 pixels."""

    level: int
    read_size: int
    size_level0: int
    step_level0: int
    level0_mpp: float
    target_mpp: float


@dataclass
class TileResult:
    slide_id: str
    coords: np.ndarray  # [n, 2] int64 level-0 (x, y)
    plan: ReadPlan
    tissue_fraction: float


def slide_id_of(path: Path) -> str:
    return path.name[: -len("".join(path.suffixes))] if path.suffixes else path.name


def list_slides(slides_dir: str | Path, extensions: tuple[str, ...] = SLIDE_EXTENSIONS) -> list[Path]:
    root = Path(slides_dir)
    if not root.is_dir():
        raise UserError(f"{root}: slide directory not found")
    slides = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in extensions)
    if not slides:
        raise UserError(f"{root}: no slides with extensions {', '.join(extensions)}")
    return slides


def level0_mpp(slide, override: float | None = None) -> float:
    """Microns per level-0 pixel: explicit override, else OpenSlide's mpp, else from the objective power."""
    import openslide

    if override:
        return float(override)
    props = slide.properties
    if openslide.PROPERTY_NAME_MPP_X in props:
        return float(props[openslide.PROPERTY_NAME_MPP_X])
    if openslide.PROPERTY_NAME_OBJECTIVE_POWER in props:
        return 10.0 / float(props[openslide.PROPERTY_NAME_OBJECTIVE_POWER])
    raise UserError("slide has neither mpp nor objective power; set data.slide_mpp")


def read_plan(slide, cfg: TileConfig, mpp_override: float | None = None) -> ReadPlan:
    mpp0 = level0_mpp(slide, mpp_override)
    target = 10.0 / cfg.target_magnification if cfg.target_magnification else cfg.target_mpp
    factor = target / mpp0  # level-0 pixels per target pixel
    size0 = int(round(cfg.patch_size * factor))
    step0 = int(round((cfg.patch_size - cfg.overlap) * factor))
    if step0 <= 0:
        raise UserError(f"tile.overlap ({cfg.overlap}) must be smaller than tile.patch_size ({cfg.patch_size})")
    # The coarsest level that is still at least as fine as the target (2% slack for rounded downsamples).
    level = max((i for i, d in enumerate(slide.level_downsamples) if d <= factor * 1.02), default=0)
    read_size = int(round(size0 / slide.level_downsamples[level]))
    return ReadPlan(level, read_size, size0, step0, mpp0, target)


def tissue_mask(slide, cfg: TileConfig, mpp0: float) -> tuple[np.ndarray, float]:
    """Boolean tissue mask of a thumbnail and the thumbnail's level-0 pixels per mask pixel."""
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects

    w0, h0 = slide.dimensions
    side = int(min(cfg.thumbnail_max, max(64, max(w0, h0) * mpp0 / cfg.seg_mpp)))
    thumb = np.asarray(slide.get_thumbnail((side, side)).convert("RGB"))
    scale = w0 / thumb.shape[1]  # level-0 px per thumbnail px
    saturation = rgb2hsv(thumb)[..., 1]
    otsu = threshold_otsu(saturation) if np.ptp(saturation) > 0 else cfg.min_saturation
    threshold = min(max(otsu, cfg.min_saturation), cfg.max_saturation)
    mask = saturation > threshold
    um2_per_px = (scale * mpp0) ** 2
    mask = remove_small_holes(mask, max_size=int(cfg.min_hole_um2 / um2_per_px))
    mask = remove_small_objects(mask, max_size=int(cfg.min_speck_um2 / um2_per_px))
    return mask, scale


def tissue_grid(
    mask: np.ndarray, scale: float, dims0: tuple[int, int], plan: ReadPlan, min_tissue: float
) -> np.ndarray:
    """Level-0 (x, y) of every grid patch whose tissue fraction (read off the mask) is at least min_tissue."""
    w0, h0 = dims0
    xs = np.arange(0, w0 - plan.size_level0 + 1, plan.step_level0)
    ys = np.arange(0, h0 - plan.size_level0 + 1, plan.step_level0)
    if len(xs) == 0 or len(ys) == 0:
        return np.zeros((0, 2), np.int64)
    # Integral image: each patch's tissue area in O(1).
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = mask.shape

    def to_mask(v: np.ndarray, limit: int) -> np.ndarray:
        return np.clip(np.round(v / scale).astype(np.int64), 0, limit)

    x0, x1 = to_mask(xs, w), to_mask(xs + plan.size_level0, w)
    y0, y1 = to_mask(ys, h), to_mask(ys + plan.size_level0, h)
    area = (
        integral[y1[:, None], x1[None, :]]
        - integral[y0[:, None], x1[None, :]]
        - integral[y1[:, None], x0[None, :]]
        + integral[y0[:, None], x0[None, :]]
    )
    cells = np.maximum((y1 - y0)[:, None] * (x1 - x0)[None, :], 1)
    keep_y, keep_x = np.nonzero(area / cells >= min_tissue)
    return np.stack([xs[keep_x], ys[keep_y]], axis=1).astype(np.int64)


def tile_slide(path: Path, cfg: TileConfig, mpp_override: float | None = None) -> TileResult:
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        plan = read_plan(slide, cfg, mpp_override)
        mask, scale = tissue_mask(slide, cfg, plan.level0_mpp)
        coords = tissue_grid(mask, scale, slide.dimensions, plan, cfg.min_tissue)
    return TileResult(slide_id_of(path), coords, plan, float(mask.mean()))


def tile_to_file(path: Path, out: Path, cfg: TileConfig, mpp_override: float | None = None) -> TileResult:
    """tile_slide, then its coordinates written to `out`."""
    import openslide

    result = tile_slide(path, cfg, mpp_override)
    with openslide.OpenSlide(str(path)) as slide:
        write_coords(out, result, slide)
    return result


def write_coords(path: Path, result: TileResult, slide) -> None:
    """CLAM-layout coordinates file, complete or absent (written under a temporary name)."""
    plan = result.plan
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as f:
        ds = f.create_dataset("coords", data=result.coords, dtype=np.int64, maxshape=(None, 2))
        level_dim = slide.level_dimensions[plan.level]
        ds.attrs.update(
            patch_size=plan.read_size,
            patch_level=plan.level,
            downsample=np.array([slide.level_downsamples[plan.level]] * 2),
            downsampled_level_dim=np.array(level_dim),
            level_dim=np.array(level_dim),
            name=result.slide_id,
            save_path=str(path.parent),
            patch_size_level0=plan.size_level0,
            step_size_level0=plan.step_level0,
            target_patch_size=int(round(plan.size_level0 * plan.level0_mpp / plan.target_mpp)),
            target_mpp=plan.target_mpp,
            level0_mpp=plan.level0_mpp,
            target_magnification=10.0 / plan.target_mpp,
            level0_magnification=10.0 / plan.level0_mpp,
            level0_width=slide.dimensions[0],
            level0_height=slide.dimensions[1],
        )


@dataclass(frozen=True)
class Coords:
    """What extraction needs from a coordinates file (ours, CLAM's or TRIDENT's)."""

    coords: np.ndarray
    level: int
    read_size: int
    out_size: int


def read_coords(path: Path, slide=None) -> Coords:
    """Read `coords` with its reading plan. CLAM files give patch_level/patch_size; TRIDENT files give
    patch_size_level0 and patch_size (the size at the target magnification), read here from level 0."""
    with h5py.File(path, "r") as f:
        if "coords" not in f:
            raise UserError(f"{path}: no 'coords' dataset")
        ds = f["coords"]
        coords = ds[:].astype(np.int64)
        attrs = dict(ds.attrs)
    if "patch_level" in attrs:
        level, read_size = int(attrs["patch_level"]), int(attrs["patch_size"])
    elif "patch_size_level0" in attrs:
        level, read_size = 0, int(attrs["patch_size_level0"])
    else:
        raise UserError(f"{path}: coords has neither CLAM (patch_level) nor TRIDENT (patch_size_level0) attributes")
    out = int(attrs.get("target_patch_size", attrs.get("patch_size", read_size)))
    return Coords(coords, level, read_size, out)

"""Tissue segmentation and a patch grid at a target resolution, saved as CLAM-compatible coordinate HDF5 files.

Segmentation runs on a low-resolution thumbnail: Otsu's threshold on HSV saturation (glass is unsaturated, stained
tissue is not), then holes and specks smaller than given areas are removed. The grid is laid out in level-0 pixels at
the target resolution (default 256 px at 0.5 mpp, i.e. 20x): on a 40x slide a patch spans 512 level-0 pixels and is
read from the level whose downsample is closest to 2 without being coarser, then resized if needed. The level-0
resolution comes from data.mpp_csv, the slide, its objective power or data.slide_mpp, in that order (`level0_mpp`);
a slide without one, or whose level 0 is coarser than the target, fails with the setting that fixes it.

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
MULTIPART_EXTENSIONS = (".ome.tiff", ".ome.tif")  # stripped whole, so `x.ome.tiff` is slide `x`
# How much coarser than the target a level 0 may be (upsampled then): scanners' "20x" ranges up to ~0.504 mpp.
MPP_SLACK = 1.1


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


def slide_id_of(path: str | Path) -> str:
    """The file name less its slide extension only: TCGA names keep their dotted UUID
    (`TCGA-3C-AALI-01Z-00-DX2.CF4496E0-....svs` -> `TCGA-3C-AALI-01Z-00-DX2.CF4496E0-...`), as in labels CSVs."""
    name = Path(path).name
    ext = next((e for e in (*MULTIPART_EXTENSIONS, *SLIDE_EXTENSIONS) if name.lower().endswith(e)), "")
    return name[: len(name) - len(ext)] if ext and len(name) > len(ext) else name


def list_slides(slides_dir: str | Path, extensions: tuple[str, ...] = SLIDE_EXTENSIONS) -> list[Path]:
    root = Path(slides_dir)
    if not root.is_dir():
        raise UserError(f"{root}: slide directory not found")
    slides = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in extensions)
    if not slides:
        raise UserError(f"{root}: no slides with extensions {', '.join(extensions)}")
    return slides


def read_mpp_csv(path: str | Path) -> dict[str, float]:
    """Per-slide level-0 mpp from a CSV as TRIDENT's `--custom_list_of_wsis` (`wsi,mpp`; `slide_id,mpp` too); the
    `wsi` column may hold file names, matched by their slide id."""
    import pandas as pd

    path = Path(path)
    df = pd.read_csv(path, dtype=str)
    ids = next((c for c in ("wsi", "slide_id") if c in df.columns), None)
    if ids is None or "mpp" not in df.columns:
        raise UserError(f"{path}: expected columns wsi (or slide_id) and mpp, found {', '.join(df.columns)}")
    mpp = pd.to_numeric(df["mpp"], errors="coerce")
    bad = df[ids][~(mpp > 0)].tolist()
    if bad:
        raise UserError(f"{path}: mpp must be a positive number (rows of {', '.join(map(str, bad[:5]))})")
    return {slide_id_of(s): float(m) for s, m in zip(df[ids], mpp, strict=True)}


def level0_mpp(slide, given: float | None = None, fallback: float | None = None) -> float:
    """Microns per level-0 pixel: the slide's entry in data.mpp_csv, else its own mpp, else its objective power, else
    data.slide_mpp (a fallback, never an override of what the slide records)."""
    import openslide

    if given:
        return float(given)
    props = slide.properties
    if openslide.PROPERTY_NAME_MPP_X in props:
        return float(props[openslide.PROPERTY_NAME_MPP_X])
    if openslide.PROPERTY_NAME_OBJECTIVE_POWER in props:
        return 10.0 / float(props[openslide.PROPERTY_NAME_OBJECTIVE_POWER])
    if fallback:
        return float(fallback)
    raise UserError(
        "the slide records neither mpp nor objective power: set data.slide_mpp (for every such slide) "
        "or give its mpp in data.mpp_csv (columns wsi,mpp)"
    )


def target_mpp(cfg: TileConfig) -> float:
    return 10.0 / cfg.target_magnification if cfg.target_magnification else cfg.target_mpp


def read_plan(slide, cfg: TileConfig, mpp: float | None = None, fallback_mpp: float | None = None) -> ReadPlan:
    mpp0 = level0_mpp(slide, mpp, fallback_mpp)
    target = target_mpp(cfg)
    if mpp0 > target * MPP_SLACK:
        # A 72- or 96-dpi TIFF header read as the scan resolution gives 350 or 265 mpp.
        raise UserError(
            f"level-0 mpp {mpp0:.4g} is coarser than the target {target:.4g} mpp; if the file's resolution is wrong, "
            "give this slide's mpp in data.mpp_csv (columns wsi,mpp)"
        )
    factor = target / mpp0  # level-0 pixels per target pixel
    size0 = int(round(cfg.patch_size * factor))
    step0 = int(round((cfg.patch_size - cfg.overlap) * factor))
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
    mask: np.ndarray, scale: float, dims0: tuple[int, int], plan: ReadPlan, min_tissue: float, pad: bool = False
) -> np.ndarray:
    """Level-0 (x, y) of every grid patch whose tissue fraction (read off the mask) is at least min_tissue. With `pad`
    the grid also covers the last partial row and column (as CLAM's default): what lies past the edge is background."""
    w0, h0 = dims0
    last = 1 if pad else plan.size_level0  # a patch may start anywhere on the slide with pad, else must fit
    xs = np.arange(0, w0 - last + 1, plan.step_level0)
    ys = np.arange(0, h0 - last + 1, plan.step_level0)
    if len(xs) == 0 or len(ys) == 0:
        return np.zeros((0, 2), np.int64)
    # Integral image: each patch's tissue area in O(1).
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = mask.shape

    def to_mask(v: np.ndarray, limit: int | None = None) -> np.ndarray:
        px = np.round(v / scale).astype(np.int64)
        return px if limit is None else np.clip(px, 0, limit)

    x0, x1 = to_mask(xs, w), to_mask(xs + plan.size_level0, w)
    y0, y1 = to_mask(ys, h), to_mask(ys + plan.size_level0, h)
    area = (
        integral[y1[:, None], x1[None, :]]
        - integral[y0[:, None], x1[None, :]]
        - integral[y1[:, None], x0[None, :]]
        + integral[y0[:, None], x0[None, :]]
    )
    # The whole patch's area, also any part past the slide's edge (background there).
    cells = np.maximum(np.outer(to_mask(ys + plan.size_level0) - y0, to_mask(xs + plan.size_level0) - x0), 1)
    keep_y, keep_x = np.nonzero(area / cells >= min_tissue)
    return np.stack([xs[keep_x], ys[keep_y]], axis=1).astype(np.int64)


def tile_slide(path: Path, cfg: TileConfig, mpp: float | None = None, fallback_mpp: float | None = None) -> TileResult:
    """`mpp`: this slide's level-0 mpp when known from elsewhere (data.mpp_csv); `fallback_mpp`: data.slide_mpp."""
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        plan = read_plan(slide, cfg, mpp, fallback_mpp)
        mask, scale = tissue_mask(slide, cfg, plan.level0_mpp)
        coords = tissue_grid(mask, scale, slide.dimensions, plan, cfg.min_tissue, cfg.pad_edges)
    return TileResult(slide_id_of(path), coords, plan, float(mask.mean()))


def tile_to_file(
    path: Path, out: Path, cfg: TileConfig, mpp: float | None = None, fallback_mpp: float | None = None
) -> TileResult:
    """tile_slide, then its coordinates written to `out`."""
    import openslide

    result = tile_slide(path, cfg, mpp, fallback_mpp)
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

"""A synthetic TCGA-like cohort: pyramidal tiled TIFF slides whose tissue texture depends on binary "mutations".

Each slide shows tissue blobs (pink stroma, purple nuclei) on a white background. Part of the tissue is tumour, and
only there do the patient's mutations change the texture, one visible trait per gene (nuclear density, nuclear hue,
fibrous stroma, nuclear size, pale stroma, vacuoles). A MIL model therefore has to find the tumour patches, which is
what makes attention maps meaningful on this data. Labels are written in the official M4 layout
(`case_id, slide_id, <gene columns>`); some patients have two slides.

Slides are written with tifffile as consecutive top-level pages (OpenSlide's generic-tiff reader ignores SubIFDs),
reduced levels flagged subfiletype=1, resolution in centimetres so OpenSlide reports the intended mpp, and deflate
compression so no extra codec package is needed.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

# Palette indexed by pixel class; a slide is drawn as a class map, then coloured by lookup (fast at 0.5 mpp).
BACKGROUND, STROMA, PALE_STROMA, FIBRE, PALE_FIBRE, NUCLEUS, BLUE_NUCLEUS = range(7)
PALETTE = np.array(
    [
        [241, 240, 238],  # background (glass)
        [232, 168, 198],  # eosin stroma
        [238, 204, 222],  # pale stroma
        [204, 148, 174],  # stroma fibre (darker stripe)
        [210, 180, 196],  # pale stroma fibre
        [92, 52, 128],  # hematoxylin nucleus
        [38, 46, 122],  # bluer, darker chromatin
    ],
    np.float32,
)
GRAIN = np.array([1.5, 4, 4, 4, 4, 6, 6], np.float32)  # pixel noise amplitude per class

# One visible trait per gene, in column order; a cohort may use up to len(TRAITS) genes.
TRAITS = ("dense_nuclei", "blue_nuclei", "fibres", "large_nuclei", "pale_stroma", "vacuoles")
DEFAULT_GENES = ("TP53", "PIK3CA", "CDH1", "GATA3")


@dataclass(frozen=True)
class SlideSpec:
    slide_id: str
    case_id: str
    mutations: tuple[int, ...]
    seed: int


def write_pyramid_tiff(path: str | Path, rgb: np.ndarray, mpp: float = 0.5, n_levels: int = 3, tile: int = 256) -> None:
    """Write uint8 [H, W, 3] as a tiled pyramid OpenSlide opens as generic-tiff with `n_levels` levels and `mpp`.

    Written to a temporary name and renamed, so an interrupted run never leaves a half-written slide behind.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    level = rgb
    with tifffile.TiffWriter(tmp, bigtiff=rgb.nbytes > 2**31) as tif:
        for i in range(n_levels):
            ppcm = 1e4 / (mpp * 2**i)  # pixels per centimetre at this level
            tif.write(
                level,
                photometric="rgb",
                tile=(tile, tile),
                compression="zlib",
                resolution=(ppcm, ppcm),
                resolutionunit="CENTIMETER",
                subfiletype=0 if i == 0 else 1,  # 1 = FILETYPE_REDUCEDIMAGE, required for OpenSlide to see the level
                metadata=None,
            )
            level = _halve(level)
    os.replace(tmp, path)


def _halve(rgb: np.ndarray) -> np.ndarray:
    """2x2 mean, dropping an odd last row/column."""
    h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    return rgb[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).astype(np.uint8)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """A smooth random field in [0, 1] with blobs about `cell` pixels across, made at low resolution and upsampled."""
    from PIL import Image

    low = ndimage.gaussian_filter(rng.random((shape[0] // cell + 3, shape[1] // cell + 3)), 1.0)
    low = ((low - low.min()) / (np.ptp(low) + 1e-8)).astype(np.float32)
    big = Image.fromarray(low, mode="F").resize((low.shape[1] * cell, low.shape[0] * cell), Image.BILINEAR)
    return np.asarray(big)[: shape[0], : shape[1]]


def _nuclei(rng: np.random.Generator, density: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask of round nuclei of `radius` px, centres drawn with per-pixel probability `density`."""
    centres = (rng.random(density.shape, dtype=np.float32) < density).astype(np.float32)
    sigma = radius / 1.2
    return ndimage.gaussian_filter(centres, sigma) > 0.5 / (2 * np.pi * sigma**2)  # half one isolated centre's peak


def render_slide(
    mutations: Sequence[int], height: int, width: int, seed: int, mpp: float = 0.5, tissue: bool = True
) -> np.ndarray:
    """RGB uint8 [height, width, 3] of one synthetic H&E-like slide at `mpp` microns per pixel."""
    rng = np.random.default_rng(seed)
    scale = 0.5 / mpp  # sizes below are in pixels at 0.5 mpp
    has = dict(zip(TRAITS, (bool(m) for m in mutations), strict=False))
    shape = (height, width)
    classes = np.full(shape, BACKGROUND, np.uint8)
    if tissue:
        tissue_mask = _smooth_field(rng, shape, int(96 * scale)) > 0.42
        tumour = (_smooth_field(rng, shape, int(128 * scale)) > 0.55) & tissue_mask
        classes[tissue_mask] = STROMA
        if has.get("pale_stroma"):
            classes[tumour] = PALE_STROMA
        if has.get("fibres"):
            yy, xx = np.ogrid[0:height, 0:width]
            angle = rng.uniform(0, np.pi)
            waves = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / (10 * scale))) > 0.3
            classes[tumour & waves] += FIBRE - STROMA  # stroma -> fibre, pale stroma -> pale fibre
        if has.get("vacuoles"):
            classes[_nuclei(rng, np.where(tumour, 3e-4 / scale**2, 0).astype(np.float32), 9 * scale)] = BACKGROUND
        density = np.where(tumour, 2e-3, 6e-4).astype(np.float32) / scale**2
        if has.get("dense_nuclei"):
            density = np.where(tumour, density * 2.2, density)
        radius = 3.6 * scale
        if has.get("large_nuclei"):
            nuclei = _nuclei(rng, density * (tissue_mask & ~tumour), radius)
            nuclei |= _nuclei(rng, density * 0.6 * tumour, radius * 1.7)
        else:
            nuclei = _nuclei(rng, density * tissue_mask, radius)
        classes[nuclei] = NUCLEUS
        if has.get("blue_nuclei"):
            classes[nuclei & tumour] = BLUE_NUCLEUS
    palette = PALETTE * np.float32(1 + rng.normal(0, 0.02))  # slide-level stain intensity
    palette[BACKGROUND] = PALETTE[BACKGROUND]
    grain = rng.standard_normal((*shape, 1), dtype=np.float32)
    return np.clip(palette[classes] + GRAIN[classes][..., None] * grain, 0, 255).astype(np.uint8)


def cohort_specs(
    n_patients: int, genes: Sequence[str], seed: int, prevalence: float = 0.4, second_slide_rate: float = 0.25
) -> list[SlideSpec]:
    """Patients with independent Bernoulli mutations; a fraction of them get a second slide with the same labels."""
    if len(genes) > len(TRAITS):
        raise ValueError(f"the synthetic cohort supports at most {len(TRAITS)} genes, got {len(genes)}")
    rng = np.random.default_rng(seed)
    specs = []
    for p in range(n_patients):
        case_id = f"SYN-{p:04d}"
        mutations = tuple(int(v) for v in rng.random(len(genes)) < prevalence)
        n_slides = 2 if rng.random() < second_slide_rate else 1
        specs += [
            SlideSpec(f"{case_id}-S{s + 1}", case_id, mutations, int(rng.integers(2**31))) for s in range(n_slides)
        ]
    return specs


def write_labels(path: str | Path, specs: Sequence[SlideSpec], genes: Sequence[str]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case_id", "slide_id", *genes])
        for s in specs:
            writer.writerow([s.case_id, s.slide_id, *s.mutations])
    os.replace(tmp, path)


def _write_one(args: tuple[SlideSpec, Path, int, int, float]) -> None:
    spec, out, height, width, mpp = args
    path = out / f"{spec.slide_id}.tiff"
    if not path.exists():
        write_pyramid_tiff(path, render_slide(spec.mutations, height, width, spec.seed, mpp), mpp=mpp)


def make_cohort(
    out_dir: str | Path,
    n_patients: int = 48,
    genes: Sequence[str] = DEFAULT_GENES,
    height: int = 1536,
    width: int = 2048,
    mpp: float = 0.5,
    seed: int = 0,
    workers: int = 2,
) -> tuple[Path, Path]:
    """Write slides/<slide_id>.tiff and labels.csv under out_dir (slides already present are kept); return both paths."""
    out = Path(out_dir)
    slides = out / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    specs = cohort_specs(n_patients, genes, seed)
    jobs = [(s, slides, height, width, mpp) for s in specs]
    if workers > 1:
        from multiprocessing import get_context

        with get_context("spawn").Pool(workers) as pool:
            pool.map(_write_one, jobs)
    else:
        for job in jobs:
            _write_one(job)
    labels = out / "labels.csv"
    write_labels(labels, specs, genes)
    return slides, labels

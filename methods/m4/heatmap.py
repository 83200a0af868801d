"""Per-gene attention over the slide thumbnail.

For M4 a gene's attention is its gate-weighted mixture of the experts' attention (gates averaged over the 4 proxy
segments), folded back from the padded grid onto the real patches; for MMoE the same with its linear gates. Scores are
shown as percentiles within the slide, as CLAM does, so the map reads the same whatever the softmax temperature.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.errors import UserError


def _percentiles(scores: np.ndarray) -> np.ndarray:
    ranks = scores.argsort().argsort()
    return ranks / max(len(scores) - 1, 1)


def _patch_size_level0(attrs: dict) -> int:
    """Level-0 side of a patch: TRIDENT/ours store it; CLAM stores patch_size at patch_level and its downsample."""
    if "patch_size_level0" in attrs:
        return int(attrs["patch_size_level0"])
    downsample = np.atleast_1d(attrs.get("downsample", 1.0))[0]
    return int(round(int(attrs.get("patch_size", 256)) * float(downsample)))


def render(
    thumb: np.ndarray, coords: np.ndarray, size0: int, scale: float, scores: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """Blend a jet-coloured score per patch square onto an RGB thumbnail ([H, W, 3] uint8)."""
    import matplotlib

    colours = (matplotlib.colormaps["jet"](_percentiles(scores))[:, :3] * 255).astype(np.float32)
    overlay = thumb.astype(np.float32).copy()
    covered = np.zeros(thumb.shape[:2], bool)
    side = max(1, int(round(size0 / scale)))
    for (x, y), colour in zip(coords, colours, strict=True):
        tx, ty = int(x / scale), int(y / scale)
        overlay[ty : ty + side, tx : tx + side] = colour
        covered[ty : ty + side, tx : tx + side] = True
    out = thumb.astype(np.float32)
    out[covered] = (1 - alpha) * out[covered] + alpha * overlay[covered]
    return out.astype(np.uint8)


def attention_heatmaps(
    model: torch.nn.Module,
    genes: list[str],
    slide_ids: list[str],
    slides_dir: Path,
    features_dir: Path,
    out_dir: Path,
    thumbnail_size: int = 1024,
) -> list[Path]:
    import h5py
    import openslide
    from PIL import Image

    from methods.m4.extract import load_features, output_paths
    from methods.m4.tiling import list_slides, slide_id_of

    files = {slide_id_of(p): p for p in list_slides(slides_dir)}
    written = []
    model.eval()
    for sid in slide_ids:
        if sid not in files:
            raise UserError(f"{slides_dir}: no slide file for '{sid}'")
        h5_path = output_paths(features_dir, sid)[0]
        if not h5_path.is_file():
            raise UserError(f"{h5_path}: features/coords missing for '{sid}'")
        with h5py.File(h5_path, "r") as f:
            coords = f["coords"][:]
            size0 = _patch_size_level0(dict(f["coords"].attrs))
        with torch.no_grad():
            _, attention = model(load_features(features_dir, sid), return_attention=True)
        with openslide.OpenSlide(str(files[sid])) as slide:
            thumb = np.asarray(slide.get_thumbnail((thumbnail_size, thumbnail_size)).convert("RGB"))
            scale = slide.dimensions[0] / thumb.shape[1]
        for gene, scores in zip(genes, attention.numpy(), strict=True):
            path = out_dir / f"{sid}_{gene}.png"
            Image.fromarray(render(thumb, coords, size0, scale, scores)).save(path)
            written.append(path)
    return written

"""Attention heatmaps over the slide thumbnail, from our coordinates and from CLAM's."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from methods.m4.heatmap import attention_heatmaps
from methods.m4.model import m4 as build_m4

COORDS = np.array([[0, 0], [512, 512], [1024, 0]], np.int64)  # level 0 of the 1536 x 1024 40x slide


def painted(slide40, tmp_path, attrs: dict) -> np.ndarray:
    """Heatmap of one gene on a 384 x 256 thumbnail (4 level-0 px per thumbnail px); returns the changed pixels."""
    import openslide

    path, _ = slide40
    slides_dir, features, out = tmp_path / "slides", tmp_path / "features", tmp_path / "out"
    for d in (slides_dir, features / "h5_files", out):
        d.mkdir(parents=True)
    os.symlink(path, slides_dir / "s40.tiff")
    with h5py.File(features / "h5_files" / "s40.h5", "w") as f:
        f.create_dataset("features", data=np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32))
        f.create_dataset("coords", data=COORDS).attrs.update(attrs)
    torch.manual_seed(0)
    model = build_m4(feat_input=16, tasks=2, num_expert=2, hidden=32)
    written = attention_heatmaps(model, ["A", "B"], ["s40"], slides_dir, features, out, thumbnail_size=384)
    assert [p.name for p in written] == ["s40_A.png", "s40_B.png"]
    heat = np.asarray(Image.open(written[0]).convert("RGB")).astype(int)
    with openslide.OpenSlide(str(path)) as s:
        thumb = np.asarray(s.get_thumbnail((384, 384)).convert("RGB")).astype(int)
    assert heat.shape == thumb.shape == (256, 384, 3)
    return np.abs(heat - thumb).max(-1) > 3


@pytest.mark.parametrize(
    "attrs",
    [
        {"patch_size": 256, "patch_level": 1, "patch_size_level0": 512},  # ours
        {"patch_size": 256, "patch_size_level0": 512},  # TRIDENT: patch_size at the target magnification
        {"patch_size": 256, "patch_level": 1, "downsample": np.array([2.0, 2.0])},  # CLAM, patches read at level 1
    ],
    ids=["ours", "trident", "clam-level1"],
)
def test_heatmap_squares_cover_each_patch(slide40, tmp_path, attrs):
    changed = painted(slide40, tmp_path, attrs)
    # Each patch spans 512 level-0 px = 128 thumbnail px; nothing outside the patches is painted.
    for x, y in COORDS // 4:
        assert changed[y : y + 128, x : x + 128].mean() > 0.9, (x, y)
    expected = np.zeros_like(changed)
    for x, y in COORDS // 4:
        expected[y : y + 128, x : x + 128] = True
    assert not (changed & ~expected).any()

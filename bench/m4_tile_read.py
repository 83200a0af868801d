"""Tiling + patch reading through the extract pipeline against raw OpenSlide reads of the same patches.

One synthetic slide: `tile` finds the tissue grid, then (a) the pipeline's PatchDataset reads every patch in one
worker (region read, RGB, tensor), and (b) a bare loop calls `read_region(...).convert('RGB')` on the same patches.
Prints patches/s of both and their ratio (goal: the pipeline keeps >= 0.8 of the raw rate per worker).
Usage: python bench/m4_tile_read.py [--size 6144] [--repeats 3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import openslide

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from methods.m4.extract import PatchDataset, SlideJob  # noqa: E402
from methods.m4.slides import render_slide, write_pyramid_tiff  # noqa: E402
from methods.m4.tiling import TileParams, tile_slide  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=6144)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp()) / "slide.tiff"
    write_pyramid_tiff(path, render_slide((1, 0, 1, 0), args.size, args.size, seed=0), mpp=0.5)
    start = time.perf_counter()
    result = tile_slide(path, TileParams(patch_size=256, target_mpp=0.5))
    t_tile = time.perf_counter() - start
    coords, plan = result.coords, result.plan
    job = SlideJob("slide", path, coords, plan.level, plan.read_size)

    def raw() -> float:
        start = time.perf_counter()
        with openslide.OpenSlide(str(path)) as s:
            for x, y in coords:
                s.read_region((int(x), int(y)), plan.level, (plan.read_size, plan.read_size)).convert("RGB")
        return time.perf_counter() - start

    def pipeline() -> float:
        start = time.perf_counter()
        dataset = PatchDataset([job], out_size=plan.read_size)
        for k in range(len(dataset)):
            dataset[k]
        return time.perf_counter() - start

    t_raw, t_pipe = [], []
    for _ in range(args.repeats):  # interleaved, best of N
        t_raw.append(raw())
        t_pipe.append(pipeline())
    n = len(coords)
    raw_rate, read_rate, pipe_rate = n / min(t_raw), n / min(t_pipe), n / (min(t_pipe) + t_tile)
    print(f"{n} patches of {plan.read_size} px; tiling took {t_tile:.3f} s")
    print(f"raw OpenSlide: {raw_rate:.0f} patches/s   pipeline read: {read_rate:.0f} patches/s   "
          f"tile + pipeline read: {pipe_rate:.0f} patches/s")
    print(f"ratio pipeline read / raw = {read_rate / raw_rate:.2f}; "
          f"ratio tile + read / raw = {pipe_rate / raw_rate:.2f}  (goal >= 0.8 per worker)")


if __name__ == "__main__":
    main()

"""`tile` + region reading through the extract pipeline against raw OpenSlide reads of the same patches, one worker.

One synthetic pyramidal TIFF (methods.m4.slides). Timed in turn, best of N (the machine is noisy):

* raw: open the slide, `read_region(...).convert('RGB')` for every tissue patch, nothing else;
* pipeline, in process: `tiling.tile_slide` (thumbnail, Otsu, grid) then every item of `extract.PatchDataset`
  (region read, RGB, uint8 tensor): what one DataLoader worker does, tiling included;
* pipeline, DataLoader: the same dataset through `torch.utils.data.DataLoader` with one worker process and batches of
  64, as `extract` runs it (worker start-up and batch transfer included; tiling not), over the patches `--passes`
  times so the worker's start-up is spread as over a real slide's thousands of patches.

Patches are kept at their read size (no resize) so the same pixels are read in all three. Prints patches/s and the
ratios against raw (goal: the pipeline keeps >= 0.8 of the raw rate per worker).
Usage: python bench/m4_tile_read.py [--size 6144] [--repeats 4] [--passes 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import openslide
import torch

from methods.m4.config import TileConfig
from methods.m4.extract import PatchDataset, SlideJob
from methods.m4.slides import render_slide, write_pyramid_tiff
from methods.m4.tiling import tile_slide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=6144, help="slide side in level-0 pixels (0.5 mpp)")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--passes", type=int, default=3, help="passes over the patches in the DataLoader timing")
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp()) / "slide.tiff"
    write_pyramid_tiff(path, render_slide((1, 0, 1, 0), args.size, args.size, seed=0), mpp=0.5)
    params = TileConfig(patch_size=256, target_mpp=0.5)
    result = tile_slide(path, params)  # warm-up (imports, page cache); its coordinates serve the raw loop
    coords, plan = result.coords, result.plan

    def raw() -> float:
        start = time.perf_counter()
        with openslide.OpenSlide(str(path)) as s:
            for x, y in coords:
                s.read_region((int(x), int(y)), plan.level, (plan.read_size, plan.read_size)).convert("RGB")
        return time.perf_counter() - start

    def pipeline() -> tuple[float, float]:
        start = time.perf_counter()
        tiled = tile_slide(path, params)
        t_tile = time.perf_counter() - start
        dataset = PatchDataset(
            [SlideJob("slide", path, tiled.coords, tiled.plan.level, tiled.plan.read_size)],
            out_size=tiled.plan.read_size,
        )
        for k in range(len(dataset)):
            dataset[k]
        return time.perf_counter() - start, t_tile

    def loader() -> float:
        repeated = np.tile(coords, (args.passes, 1))
        dataset = PatchDataset([SlideJob("slide", path, repeated, plan.level, plan.read_size)], out_size=plan.read_size)
        start = time.perf_counter()
        for _ in torch.utils.data.DataLoader(dataset, batch_size=64, num_workers=1, prefetch_factor=4):
            pass
        return time.perf_counter() - start

    t_raw, t_pipe, t_tile, t_loader = [], [], [], []
    for _ in range(args.repeats):  # interleaved, best of N: the machine is noisy
        t_raw.append(raw())
        total, tiling = pipeline()
        t_pipe.append(total)
        t_tile.append(tiling)
        t_loader.append(loader())
    n = len(coords)
    raw_rate, pipe_rate, loader_rate = n / min(t_raw), n / min(t_pipe), n * args.passes / min(t_loader)
    print(
        f"{args.size} x {args.size} slide, {n} tissue patches of {plan.read_size} px at level {plan.level}; "
        f"best of {args.repeats}"
    )
    print(f"  raw OpenSlide read_region + RGB: {raw_rate:6.0f} patches/s ({min(t_raw):.3f} s)")
    print(
        f"  tile + PatchDataset, in process: {pipe_rate:6.0f} patches/s ({min(t_pipe):.3f} s, "
        f"of which tiling {min(t_tile):.3f} s)"
    )
    print(
        f"  PatchDataset via DataLoader, 1 worker: {loader_rate:6.0f} patches/s ({min(t_loader):.3f} s for "
        f"{args.passes} passes)"
    )
    print(
        f"ratio tile + read / raw = {pipe_rate / raw_rate:.2f}; DataLoader (1 worker) / raw = "
        f"{loader_rate / raw_rate:.2f}  (goal >= 0.8 per worker)"
    )


if __name__ == "__main__":
    main()

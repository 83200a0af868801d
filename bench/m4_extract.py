"""Feature extraction: `extract.extract` (DataLoader workers read regions in parallel, batched inference_mode)
against a CLAM-style sequential loop (one reader in the main process, no prefetch), same backbone (random weights),
same slide, same batch size, same run; best of N, interleaved (the machine is noisy).

The sequential loop's time is split into reading (region + RGB + resize) and the backbone: overlapping the two can at
best give (read + backbone) / max(read, backbone), so on a CPU-only machine, where the backbone shares the cores with
the readers, the speedup is bounded by that. Defaults follow conf/m4.yaml (resnet18 at 112 px, batch 64, 2 workers).

Prints the speedup (goal >= 1.5x) and the max |difference| between the two feature matrices.
Usage: python bench/m4_extract.py [--size 6144] [--backbone resnet18] [--input-size 112] [--workers 2] [--repeats 3] [--threads 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import openslide
import torch

from methods.m4.config import ExtractConfig, TileConfig
from methods.m4.encoders import build_backbone
from methods.m4.extract import SlideJob, extract, output_paths
from methods.m4.slides import render_slide, write_pyramid_tiff
from methods.m4.tiling import tile_slide


def clam_style(path: Path, job: SlideJob, backbone, input_size: int, batch_size: int) -> np.ndarray:
    """Read a patch, transform, collect a batch, embed: all in one process, as CLAM's extract_features_fp loop."""
    from PIL import Image

    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    out, batch, t_model = [], [], 0.0
    with openslide.OpenSlide(str(path)) as s, torch.inference_mode():
        for i, (x, y) in enumerate(job.coords):
            img = s.read_region((int(x), int(y)), job.level, (job.read_size, job.read_size)).convert("RGB")
            img = img.resize((input_size, input_size), Image.BILINEAR)
            batch.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
            if len(batch) == batch_size or i == len(job.coords) - 1:
                start = time.perf_counter()
                x_ = (torch.stack(batch).float() / 255 - mean) / std
                out.append(backbone.model(x_).numpy())
                t_model += time.perf_counter() - start
                batch = []
    return np.concatenate(out), t_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=6144)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--input-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the main process (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp())
    path = work / "slide.tiff"
    write_pyramid_tiff(path, render_slide((1, 0, 1, 0), args.size, args.size, seed=0), mpp=0.5)
    result = tile_slide(path, TileConfig(patch_size=256, target_mpp=0.5))
    job = SlideJob("slide", path, result.coords, result.plan.level, result.plan.read_size)
    cfg = ExtractConfig(
        backbone=args.backbone,
        weights="random",
        allow_random_weights=True,
        input_size=args.input_size,
        batch_size=args.batch_size,
        num_workers=args.workers,
    )
    backbone = build_backbone(cfg)
    clam_style(path, job, backbone, args.input_size, args.batch_size)  # warm-up (oneDNN primitives, page cache)
    t_seq, t_model, t_pipe = [], [], []
    for r in range(args.repeats):  # interleaved, best of N
        start = time.perf_counter()
        reference, model_seconds = clam_style(path, job, backbone, args.input_size, args.batch_size)
        t_seq.append(time.perf_counter() - start)
        t_model.append(model_seconds)
        start = time.perf_counter()
        extract([job], backbone, work / f"features{r}", cfg, progress=False)
        t_pipe.append(time.perf_counter() - start)
    with h5py.File(output_paths(work / "features0", "slide")[0]) as f:
        diff = float(np.abs(f["features"][:] - reference).max())
    print(
        f"{len(job.coords)} patches, {args.backbone} at {args.input_size} px, batch {args.batch_size}, "
        f"{args.workers} loader workers, {torch.get_num_threads()} torch threads, best of {args.repeats}"
    )
    seq, model = min(t_seq), min(t_model)
    read = seq - model
    print(
        f"  CLAM-style sequential: {seq:.2f} s (reading {read:.2f} s, backbone {model:.2f} s; overlap bound "
        f"{seq / max(read, model):.2f}x)   extract: {min(t_pipe):.2f} s"
    )
    print(
        f"speedup extract / sequential = {min(t_seq) / min(t_pipe):.2f}x  (goal >= 1.5x); max |feature diff| = {diff:.2e}"
    )


if __name__ == "__main__":
    main()

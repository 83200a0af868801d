"""Patch features for every slide: `h5_files/<slide>.h5` (features, coords) and `pt_files/<slide>.pt`, as CLAM/TRIDENT.

Reading is the usual bottleneck (CLAM issue #69: "~10 days to extract 1000 WSIs"), so DataLoader workers read and
resize patches in parallel, each keeping its own OpenSlide handle, while the main process runs the backbone on whole
batches under `torch.inference_mode`. One loader streams the patches of all slides of a shard in order, so workers
never sit idle between slides; a slide's files are written as soon as its last patch is embedded.

Outputs are written under temporary names and renamed, the .pt first and the .h5 last: a slide is done exactly when
both final names exist, so a killed run resumes where it stopped and a half-written file never counts. A slide that
cannot be opened or read is reported and skipped; a slide without tissue patches is recorded and skipped.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from common.io import atomic_write
from common.items import Outcome, reason
from methods.m4.config import ExtractConfig
from methods.m4.encoders import Backbone
from methods.m4.tiling import read_coords, slide_id_of

TILE_FAILED = ".tile_failed.txt"  # beside a slide's would-be coordinates: why tiling it failed


# ---------------------------------------------------------------------------------------------------------------------
# Reading


@dataclass
class SlideJob:
    slide_id: str
    slide_path: Path
    coords: np.ndarray
    level: int
    read_size: int
    coord_attrs: dict = field(default_factory=dict)


class PatchDataset(torch.utils.data.Dataset):
    """Patches of several slides in order. Items: (uint8 [S, S, 3], slide index, error message or "").

    Pixels stay in the decoder's H x W x C order: a batch permuted to [B, 3, S, S] is then channels-last at no cost.

    Read errors are returned, not raised, so one corrupt slide does not stop the loader for the others.
    """

    def __init__(self, jobs: list[SlideJob], out_size: int):
        self.jobs, self.out_size = jobs, out_size
        counts = np.array([len(j.coords) for j in jobs], dtype=np.int64)
        self.slide_of = np.repeat(np.arange(len(jobs)), counts)
        self.start = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(jobs) else np.zeros(0, np.int64)
        self._open: tuple[int, object] | None = None  # one handle per worker process, reopened when the slide changes

    def __len__(self) -> int:
        return len(self.slide_of)

    def _slide(self, j: int):
        import openslide

        if self._open is None or self._open[0] != j:
            if self._open is not None:
                self._open[1].close()
            self._open = (j, openslide.OpenSlide(str(self.jobs[j].slide_path)))
        return self._open[1]

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int, str]:
        from PIL import Image

        j = int(self.slide_of[k])
        job = self.jobs[j]
        x, y = (int(v) for v in job.coords[k - self.start[j]])
        try:
            rgba = self._slide(j).read_region((x, y), job.level, (job.read_size, job.read_size))
        except Exception as e:  # noqa: BLE001 - openslide.OpenSlideError and friends; reported per slide by the caller
            self._open = None
            return torch.zeros(self.out_size, self.out_size, 3, dtype=torch.uint8), j, f"{type(e).__name__}: {e}"
        # OpenSlide returns transparent pixels past the slide's edge (tile.pad_edges) and for missing tiles: white glass,
        # not the black a plain RGB conversion would give.
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
        if img.size[0] != self.out_size:
            img = img.resize((self.out_size, self.out_size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(img).copy()), j, ""


# ---------------------------------------------------------------------------------------------------------------------
# Outputs


def output_paths(features_dir: Path, slide_id: str) -> tuple[Path, Path]:
    return features_dir / "h5_files" / f"{slide_id}.h5", features_dir / "pt_files" / f"{slide_id}.pt"


def is_done(features_dir: Path, slide_id: str) -> bool:
    return all(p.is_file() for p in output_paths(features_dir, slide_id))


def remove_stale_tmp(features_dir: Path, slide_id: str) -> None:
    """Remove temporary files a killed run left for this slide (they never count as outputs)."""
    for final in output_paths(features_dir, slide_id):
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            stale.unlink(missing_ok=True)


def write_features(features_dir: Path, job: SlideJob, features: np.ndarray, encoder: dict | None = None) -> None:
    """`encoder`: the backbone's name, weights, width, input size and normalisation, kept as the features' attributes."""
    h5_path, pt_path = output_paths(features_dir, job.slide_id)
    with atomic_write(pt_path) as tmp:
        torch.save(torch.from_numpy(features), tmp)
    # Last: its presence (with the .pt) marks the slide done.
    with atomic_write(h5_path) as tmp, h5py.File(tmp, "w") as f:
        ds = f.create_dataset(
            "features", data=features, dtype=np.float32, chunks=(min(32, max(len(features), 1)), features.shape[1])
        )
        ds.attrs.update(encoder or {})
        coords = f.create_dataset("coords", data=job.coords.astype(np.int64))
        coords.attrs.update(job.coord_attrs)


def load_features(features_dir: Path, slide_id: str) -> torch.Tensor:
    """Features of one slide from pt_files (preferred) or h5_files; made here or by CLAM/TRIDENT."""
    h5_path, pt_path = output_paths(features_dir, slide_id)
    if pt_path.is_file():
        return torch.load(pt_path, map_location="cpu", weights_only=True).float()
    with h5py.File(h5_path, "r") as f:
        return torch.from_numpy(f["features"][:]).float()


def feature_width(features_dir: Path, slide_ids: list[str]) -> int | None:
    """Width of the features of the first of `slide_ids` that has any; None when none has."""
    for sid in slide_ids:
        if any(p.is_file() for p in output_paths(features_dir, sid)):
            return int(load_features(features_dir, sid).shape[1])
    return None


def load_coords(features_dir: Path, slide_id: str) -> np.ndarray:
    with h5py.File(output_paths(features_dir, slide_id)[0], "r") as f:
        return f["coords"][:].astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------------
# The extraction loop


def plan_jobs(slides: list[Path], patches_dir: Path, features_dir: Path) -> tuple[list[SlideJob], list[Outcome]]:
    """Jobs for slides still to do; outcomes for those already done, empty, unreadable or without coordinates."""
    import openslide

    jobs, outcomes = [], []
    for path in slides:
        sid = slide_id_of(path)
        if is_done(features_dir, sid):
            outcomes.append(Outcome(sid, "skipped", message="outputs already complete"))
            continue
        remove_stale_tmp(features_dir, sid)
        coords_file = patches_dir / f"{sid}.h5"
        if not coords_file.is_file():
            outcomes.append(Outcome(sid, "failed", message=_no_coords(patches_dir, sid)))
            continue
        try:
            with openslide.OpenSlide(str(path)):
                pass
            plan = read_coords(coords_file)
        except Exception as e:  # noqa: BLE001 - an unreadable slide or coordinates file fails that slide only
            outcomes.append(Outcome(sid, "failed", message=reason(e)))
            continue
        if len(plan.coords) == 0:
            outcomes.append(Outcome(sid, "empty", message="no tissue patches"))
            continue
        with h5py.File(coords_file, "r") as f:
            attrs = dict(f["coords"].attrs)
        jobs.append(SlideJob(sid, path, plan.coords, plan.level, plan.read_size, attrs))
    return jobs, outcomes


def _no_coords(patches_dir: Path, slide_id: str) -> str:
    failed = patches_dir / f"{slide_id}{TILE_FAILED}"
    if failed.is_file():
        return f"no coordinates: tiling this slide failed ({failed.read_text().strip()})"
    return f"no coordinates in {patches_dir}: run tile first (tile_summary.json lists what it did)"


class Embedder:
    """The backbone as extraction runs it: uint8 patches [B, S, S, 3] -> float32 features [B, dim].

    Normalisation happens on the device, after the uint8 copy (4x fewer bytes to move); channels-last convolutions run
    1.2-1.5x faster for a ResNet on oneDNN (CPU) and are the layout tensor cores want; on CUDA under bf16 autocast.
    `start` returns at once with a way to fetch the result; `depth` batches may be in flight. On CUDA the copy of one
    batch's features to the host overlaps the next batch. On a CPU, `streams` threads each embed a whole batch with one
    intra-op thread: no OpenMP barrier waits for a core that a reader holds, so reading and embedding share the cores
    without stalling each other (the batches' rows never mix, so the features are those of a single stream).
    """

    def __init__(self, backbone: Backbone, device: torch.device, streams: int | None = None):
        """`streams`: CPU batches in flight (null: one per core)."""
        streams = streams or os.cpu_count() or 1
        self.device = device
        self.model = backbone.model.to(device, memory_format=torch.channels_last).eval()
        self.mean = torch.tensor(backbone.mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(backbone.std, device=device).view(1, 3, 1, 1) * 255
        cpu_streams = device.type == "cpu" and streams > 1
        self.pool = (
            ThreadPoolExecutor(streams, initializer=torch.set_num_threads, initargs=(1,)) if cpu_streams else None
        )
        self.depth = streams + 1 if self.pool else 2

    @torch.inference_mode()
    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float() - self.mean) / self.std
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.model(x).float()

    def start(self, images: torch.Tensor) -> Callable[[], np.ndarray]:
        if self.pool is not None:
            future = self.pool.submit(self._forward, images)
            return lambda: future.result().numpy()
        out = self._forward(images)
        if self.device.type != "cuda":
            return out.numpy
        host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        host.copy_(out, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        return lambda: (copied.synchronize(), host.numpy())[1]

    def close(self) -> None:
        if self.pool is not None:
            threads = torch.get_num_threads()
            self.pool.shutdown()
            torch.set_num_threads(threads)  # the streams' setting reaches process-wide BLAS state too


def default_workers(device: torch.device, cores: int | None = None) -> int:
    """Reading workers when `extract.num_workers` is null: on CUDA one per core but the one feeding the GPU, on a CPU
    one per core (bench/m4_extract.py, 2 cores, 2 streams: 2 readers 1.57 s a slide, 1 reader 1.67 s, reading
    between batches in the main process 1.81 s); at most 8."""
    cores = cores or os.cpu_count() or 1
    return min(8, max(cores - 1, 1) if device.type == "cuda" else cores)


def extract(
    jobs: list[SlideJob], backbone: Backbone, features_dir: Path, cfg: ExtractConfig, progress: bool = True
) -> list[Outcome]:
    """Embed every patch of `jobs` and write each slide's outputs as soon as it is complete."""
    from tqdm.auto import tqdm

    if not jobs:
        return []
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    num_workers = default_workers(dev) if cfg.num_workers is None else cfg.num_workers
    embed = Embedder(backbone, dev, cfg.streams)
    dataset = PatchDataset(jobs, backbone.input_size)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        num_workers=num_workers,
        pin_memory=dev.type == "cuda",
        prefetch_factor=4 if num_workers > 0 else None,
        persistent_workers=False,
    )
    buffers: dict[int, list[np.ndarray]] = {}
    received = np.zeros(len(jobs), np.int64)
    errors: dict[int, str] = {}
    outcomes = []
    bar = tqdm(total=len(dataset), desc="extract", unit="patch", disable=not progress)

    def collect(fetch: Callable[[], np.ndarray], slide_idx: torch.Tensor, messages: list[str]) -> None:
        feats = fetch()
        for j in np.unique(slide_idx.numpy()):
            rows = (slide_idx == int(j)).numpy()
            buffers.setdefault(int(j), []).append(feats[rows])
            received[j] += rows.sum()
            bad = [m for m, r in zip(messages, rows, strict=True) if r and m]
            if bad and j not in errors:
                errors[int(j)] = bad[0]
            if received[j] == len(jobs[j].coords):
                job = jobs[j]
                parts = buffers.pop(int(j))
                if j in errors:
                    outcomes.append(Outcome(job.slide_id, "failed", len(job.coords), errors[int(j)]))
                else:
                    write_features(features_dir, job, np.concatenate(parts).astype(np.float32), backbone.meta)
                    outcomes.append(Outcome(job.slide_id, "done", len(job.coords)))
        bar.update(len(feats))

    pending: deque = deque()
    try:
        for images, slide_idx, messages in loader:
            pending.append((embed.start(images), slide_idx, messages))
            if len(pending) == embed.depth:  # the oldest batch, collected while the newer ones run
                collect(*pending.popleft())
        while pending:
            collect(*pending.popleft())
    finally:
        embed.close()
    bar.close()
    return outcomes

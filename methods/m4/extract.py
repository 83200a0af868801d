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
    """Patches of several slides in order. Items: (uint8 [3, S, S], slide index, error message or "").

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
            return torch.zeros(3, self.out_size, self.out_size, dtype=torch.uint8), j, f"{type(e).__name__}: {e}"
        # OpenSlide returns transparent pixels past the slide's edge (tile.pad_edges) and for missing tiles: white glass,
        # not the black a plain RGB conversion would give.
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
        if img.size[0] != self.out_size:
            img = img.resize((self.out_size, self.out_size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1), j, ""


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


def extract(
    jobs: list[SlideJob], backbone: Backbone, features_dir: Path, cfg: ExtractConfig, progress: bool = True
) -> list[Outcome]:
    """Embed every patch of `jobs` and write each slide's outputs as soon as it is complete."""
    from tqdm.auto import tqdm

    if not jobs:
        return []
    num_workers = cfg.num_workers
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    model = backbone.model.to(dev).eval()
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    mean = torch.tensor(backbone.mean, device=dev).view(1, 3, 1, 1) * 255
    std = torch.tensor(backbone.std, device=dev).view(1, 3, 1, 1) * 255
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
    with torch.inference_mode():
        for images, slide_idx, messages in loader:
            x = (images.to(dev, non_blocking=True).float() - mean) / std
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                feats = model(x).float().cpu().numpy()
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
            bar.update(len(images))
    bar.close()
    return outcomes

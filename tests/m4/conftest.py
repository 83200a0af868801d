"""Shared fixtures for the M4 tests: tiny synthetic slides made once per session, a small random backbone, and
helpers to tile in process and run the CLI."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from methods.m4.config import ExtractConfig, TileConfig
from tests.helpers import REPO, cli_env, one_cpu_thread, run_method  # noqa: F401 - one_cpu_thread: autouse fixture, cli_env: used by test_extract

# Small enough for a 2-core CPU: a 512 x 768 slide at 0.5 mpp holds 6 grid cells of 256 px.
HEIGHT, WIDTH = 512, 768


# The synthetic demo's backbone (random ResNet-18, 512-d) at a small input size, in the main process.
FAST = ExtractConfig(
    backbone="resnet18", weights="random", allow_random_weights=True, input_size=32, batch_size=4, num_workers=0
)


def run_cli(*args: str, timeout: int = 600, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return run_method("m4", *args, cwd=cwd, timeout=timeout)


def small_real_run(slides_dir: Path, work_dir: Path) -> list[str]:
    """Overrides of a run on a directory of slides (not the synthetic cohort), small enough for the tests."""
    return [
        f"data.slides_dir={slides_dir}",
        f"data.work_dir={work_dir}",
        "extract.input_size=32",
        "extract.num_workers=0",
        "extract.allow_random_weights=true",
    ]


def tile_into(slides: list[Path], patches_dir: Path, **params) -> dict[str, np.ndarray]:
    """Tile slides in-process into patches_dir/<slide>.h5; returns the coordinates per slide id."""
    from methods.m4.tiling import slide_id_of, tile_to_file

    out = {}
    for path in slides:
        result = tile_to_file(path, patches_dir / f"{slide_id_of(path)}.h5", TileConfig(**params))
        out[result.slide_id] = result.coords
    return out


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    """(slides_dir, labels_csv) of 8 synthetic patients (some with two slides), 512 x 768 px at 0.5 mpp."""
    from methods.m4.slides import make_cohort

    root = tmp_path_factory.mktemp("cohort")
    return make_cohort(root, n_patients=8, height=HEIGHT, width=WIDTH, workers=1, seed=3)


@pytest.fixture(scope="session")
def slide40(tmp_path_factory):
    """(path, level-0 RGB) of a 40x slide: 0.25 mpp, 3 levels (downsamples 1, 2, 4), written losslessly."""
    from methods.m4.slides import render_slide, write_pyramid_tiff

    path = tmp_path_factory.mktemp("slide40") / "s40.tiff"
    rgb = render_slide((1, 1, 0, 0), 1024, 1536, seed=2, mpp=0.25)
    write_pyramid_tiff(path, rgb, mpp=0.25, n_levels=3)
    return path, rgb


@pytest.fixture(scope="session")
def backbone():
    """ResNet-18 with random weights (512-d), as the synthetic demo uses."""
    from methods.m4.encoders import build_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_backbone(FAST)


@pytest.fixture(scope="session")
def extracted(cohort, backbone, tmp_path_factory):
    """(slides, patches_dir, features_dir, coords per slide) for the first 3 cohort slides, tiled and extracted once.
    Tests that modify the outputs must work on a copy."""
    from methods.m4.extract import extract, plan_jobs
    from methods.m4.tiling import list_slides

    slides_dir, _ = cohort
    slides = list_slides(slides_dir)[:3]
    root = tmp_path_factory.mktemp("extracted")
    patches, features = root / "patches", root / "features"
    coords = tile_into(slides, patches)
    jobs, outcomes = plan_jobs(slides, patches, features)
    assert outcomes == [] and len(jobs) == 3
    outcomes = extract(jobs, backbone, features, FAST, progress=False)
    assert sorted(o.status for o in outcomes) == ["done"] * 3
    return slides, patches, features, coords


def write_plain_tiff(path: Path, rgb: np.ndarray, dpi: float | None = None) -> None:
    """One tiled level, resolution in dots per inch (72: an image editor's default) or none at all."""
    import tifffile

    resolution = {"resolution": (dpi, dpi), "resolutionunit": "INCH"} if dpi else {}
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, photometric="rgb", tile=(256, 256), compression="zlib", metadata=None, **resolution)

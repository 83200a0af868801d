"""Feature extraction: CLAM/TRIDENT output layout, reading patches at the right level, resume after a kill, bad slides."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch

from common.config import check, compose
from common.errors import UserError
from methods.m4 import extract as m4extract
from methods.m4.cohort import cohort_paths
from methods.m4.config import ExtractConfig, TileConfig
from methods.m4.data import Labels, check_features
from methods.m4.encoders import build_backbone
from methods.m4.slides import _halve
from methods.m4.tiling import read_coords, tile_slide
from tests.m4.conftest import FAST, REPO, cli_env, tile_into


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


# ---------------------------------------------------------------------------------------------------------------------
# Output layout


def test_outputs_load_back_in_the_clam_trident_layout(extracted):
    slides, patches, features, coords = extracted
    assert sorted(p.name for p in (features / "h5_files").iterdir()) == sorted(f"{p.stem}.h5" for p in slides)
    assert sorted(p.name for p in (features / "pt_files").iterdir()) == sorted(f"{p.stem}.pt" for p in slides)
    assert not leftovers(features)
    for path in slides:
        sid = path.stem
        h5_path, pt_path = m4extract.output_paths(features, sid)
        assert h5_path == features / "h5_files" / f"{sid}.h5" and pt_path == features / "pt_files" / f"{sid}.pt"
        with h5py.File(h5_path, "r") as f:
            assert {"features", "coords"} <= set(f)
            feats, xy = f["features"][:], f["coords"][:]
            attrs, encoder = dict(f["coords"].attrs), dict(f["features"].attrs)
        assert feats.dtype == np.float32 and feats.shape == (len(coords[sid]), 512)
        np.testing.assert_array_equal(xy, coords[sid])
        assert attrs["patch_level"] == 0 and attrs["patch_size"] == 256 and attrs["name"] == sid
        # The encoder is recorded with its features.
        assert (encoder["encoder"], encoder["feature_dim"], encoder["input_size"]) == ("resnet18", 512, 32)
        assert encoder["weights"] == "random" and tuple(encoder["mean"]) == pytest.approx((0.485, 0.456, 0.406))
        pt = torch.load(pt_path, map_location="cpu", weights_only=True)  # plain tensor: safe loading works
        assert isinstance(pt, torch.Tensor) and pt.dtype == torch.float32
        np.testing.assert_array_equal(pt.numpy(), feats)
        assert bool(torch.isfinite(pt).all()) and float(pt.std()) > 0
        torch.testing.assert_close(m4extract.load_features(features, sid), pt)
        np.testing.assert_array_equal(m4extract.load_coords(features, sid), coords[sid])
    # Different slides give different features (the patches were really read).
    a, b = (m4extract.load_features(features, p.stem) for p in slides[:2])
    assert not torch.allclose(a.mean(0), b.mean(0))


def test_features_made_elsewhere_load(tmp_path):
    """CLAM (pt_files only) and TRIDENT-like (h5_files only) features are both accepted."""
    x = torch.randn(7, 24)
    clam, trident = tmp_path / "clam", tmp_path / "trident"
    (clam / "pt_files").mkdir(parents=True)
    torch.save(x, clam / "pt_files" / "a.pt")
    (trident / "h5_files").mkdir(parents=True)
    with h5py.File(trident / "h5_files" / "a.h5", "w") as f:
        f.create_dataset("features", data=x.numpy().astype(np.float16))
        f.create_dataset("coords", data=np.zeros((7, 2), np.int64))
    for root in (clam, trident):
        got = m4extract.load_features(root, "a")
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, x, rtol=1e-3, atol=1e-3)
        check_features(Labels(["p"], ["a"], ["G"], np.zeros((1, 1), np.float32)), root)  # no error


@pytest.mark.parametrize(
    "setting", [{"num_workers": 2, "batch_size": 3}, {"streams": 1, "batch_size": 2}, {"streams": 3, "batch_size": 2}]
)
def test_extraction_is_the_same_with_workers_and_any_number_of_cpu_streams(extracted, backbone, tmp_path, setting):
    """Parallel readers, and batches embedded one at a time or several at once (one thread each): same features in
    the same patch order."""
    slides, patches, features, _ = extracted
    jobs, _ = m4extract.plan_jobs(slides, patches, tmp_path / "f")
    threads = torch.get_num_threads()
    outcomes = m4extract.extract(jobs, backbone, tmp_path / "f", replace(FAST, **setting), progress=False)
    assert torch.get_num_threads() == threads  # the streams' one-thread setting does not leak
    assert sorted(o.status for o in outcomes) == ["done"] * 3
    for p in slides:
        torch.testing.assert_close(
            m4extract.load_features(tmp_path / "f", p.stem),
            m4extract.load_features(features, p.stem),
            rtol=1e-4,
            atol=1e-5,
        )


def test_default_workers_follow_the_core_count():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [m4extract.default_workers(cpu, c) for c in (1, 2, 16)] == [1, 2, 8]
    assert [m4extract.default_workers(cuda, c) for c in (1, 2, 16)] == [1, 1, 8]


def test_patches_are_read_from_the_right_level_of_a_40x_slide(slide40, tmp_path):
    path, rgb = slide40
    tile_into([path], tmp_path)
    plan = read_coords(tmp_path / "s40.h5")
    job = m4extract.SlideJob("s40", path, plan.coords, plan.level, plan.read_size)
    half = _halve(rgb)
    ds = m4extract.PatchDataset([job], out_size=256)
    assert len(ds) == len(plan.coords)
    for k, (x, y) in enumerate(plan.coords.tolist()):
        img, j, err = ds[k]
        assert err == "" and j == 0 and img.dtype == torch.uint8 and img.shape == (256, 256, 3)
        np.testing.assert_array_equal(img.numpy(), half[y // 2 : y // 2 + 256, x // 2 : x // 2 + 256])
    img, _, _ = m4extract.PatchDataset([job], out_size=64)[0]
    assert img.shape == (64, 64, 3)


def test_reads_past_the_slide_edge_are_white(slide40):
    """tile.pad_edges patches reach past the edge, where OpenSlide gives transparent pixels: white, not black."""
    path, rgb = slide40
    job = m4extract.SlideJob("s40", path, np.array([[1536 - 256, 1024 - 128]]), 0, 512)
    img, _, err = m4extract.PatchDataset([job], out_size=512)[0]
    patch = img.numpy()
    assert err == ""
    np.testing.assert_array_equal(patch[:128, :256], rgb[-128:, -256:])
    assert (patch[128:] == 255).all() and (patch[:, 256:] == 255).all()


# ---------------------------------------------------------------------------------------------------------------------
# Backbones (every registered encoder: tests/m4/test_encoders.py)


def test_random_weights_need_the_explicit_flag():
    with pytest.raises(UserError, match="allow_random_weights"):
        build_backbone(ExtractConfig(backbone="resnet18", weights="random"))
    with pytest.warns(UserWarning, match="RANDOM weights"):
        bb = build_backbone(ExtractConfig(backbone="resnet18", weights="random", allow_random_weights=True))
    assert bb.dim == 512


def test_backbone_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown timm model"):
        build_backbone(ExtractConfig(backbone="no_such_net_xyz", weights="random", allow_random_weights=True))
    with pytest.raises(UserError, match="RetCCL"):
        build_backbone(ExtractConfig(backbone="retccl", weights="hub"))
    with pytest.raises(UserError, match="not found"):
        build_backbone(ExtractConfig(backbone="resnet18", weights=str(tmp_path / "missing.pth")))
    with pytest.raises(UserError, match="neither one of hub, random nor an existing path"):  # caught at composition
        check(ExtractConfig(weights=str(tmp_path / "missing.pth")))


def test_truncated_backbone_and_local_weights(tmp_path):
    """`<name>_trunc` cuts after stage 3 (ResNet-18: 256-d); a local state dict (with a head to ignore) loads."""
    import timm

    torch.manual_seed(0)
    ref = timm.create_model("resnet18", pretrained=False, num_classes=0)
    state = {f"module.{k}": v for k, v in ref.state_dict().items()}
    state["fc.weight"] = torch.zeros(128, 512)  # a RetCCL-like head, ignored
    torch.save({"state_dict": state}, tmp_path / "w.pth")
    bb = build_backbone(ExtractConfig(backbone="resnet18", weights=str(tmp_path / "w.pth")))
    assert bb.input_size == 224
    with pytest.warns(UserWarning, match="resnet18 gets 112-px patches, not the 224 px it was trained on"):
        build_backbone(ExtractConfig(backbone="resnet18", weights=str(tmp_path / "w.pth"), input_size=112))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bb.model(x), ref.eval()(x))
    with pytest.warns(UserWarning):
        trunc = build_backbone(ExtractConfig(backbone="resnet18_trunc", weights="random", allow_random_weights=True))
    assert trunc.dim == 256


# ---------------------------------------------------------------------------------------------------------------------
# Resume


def test_resume_redoes_half_written_slides_and_skips_complete_ones(extracted, backbone, tmp_path):
    slides, patches, original, _ = extracted
    features = tmp_path / "features"
    shutil.copytree(original, features)
    done, half, started = (p.stem for p in slides)
    # Killed between the two renames: the .pt is final, the .h5 only a temporary file.
    h5_half, pt_half = m4extract.output_paths(features, half)
    h5_half.rename(h5_half.with_name(f".{h5_half.name}.tmp-424242"))
    # Killed while writing the first file: only a temporary .pt.
    h5_started, pt_started = m4extract.output_paths(features, started)
    h5_started.unlink()
    pt_started.rename(pt_started.with_name(f".{pt_started.name}.tmp-424243"))
    assert m4extract.is_done(features, done)
    assert not m4extract.is_done(features, half) and not m4extract.is_done(features, started)
    # Complete outputs must not be rewritten: remember their mtimes and contents.
    complete = m4extract.output_paths(features, done)
    stamps = [p.stat().st_mtime_ns for p in complete]
    time.sleep(0.01)

    jobs, outcomes = m4extract.plan_jobs(slides, patches, features)
    assert sorted(j.slide_id for j in jobs) == sorted([half, started])
    assert [(o.item, o.status) for o in outcomes] == [(done, "skipped")]
    assert not leftovers(features)  # stale temporary files are cleared before the slide is redone
    outcomes = m4extract.extract(jobs, backbone, features, FAST, progress=False)
    assert sorted((o.item, o.status) for o in outcomes) == sorted([(half, "done"), (started, "done")])
    assert [p.stat().st_mtime_ns for p in complete] == stamps
    assert not leftovers(features)
    for p in slides:
        assert m4extract.is_done(features, p.stem)
        torch.testing.assert_close(
            m4extract.load_features(features, p.stem), m4extract.load_features(original, p.stem), rtol=1e-4, atol=1e-5
        )
    # A second run finds everything done.
    jobs, outcomes = m4extract.plan_jobs(slides, patches, features)
    assert jobs == [] and [o.status for o in outcomes] == ["skipped"] * 3


KILL_WRAPPER = r'''
"""python -m methods.m4 with write_features stopped for good while the second slide's .h5 is half written."""
import os, sys, time
from pathlib import Path
import torch
import methods.m4.extract as ex
from common.io import writer_tag

marker = Path(os.environ["M4_TEST_MARKER"])
original = ex.write_features
calls = []

def write_features(features_dir, job, features, encoder=None):
    calls.append(job.slide_id)
    if len(calls) == 1:
        return original(features_dir, job, features, encoder)
    h5_path, pt_path = ex.output_paths(features_dir, job.slide_id)
    tmp = lambda p: p.with_name(f".{p.name}.tmp-{writer_tag()}")  # common.io.atomic_write's temporary name
    pt_path.parent.mkdir(parents=True, exist_ok=True)
    h5_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torch.from_numpy(features), tmp(pt_path))
    os.replace(tmp(pt_path), pt_path)
    tmp(h5_path).write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))  # the .h5 write has only begun
    marker.write_text(f"{calls[0]} {job.slide_id}")
    time.sleep(600)  # killed here

ex.write_features = write_features
from common.cli import main
from methods.m4.__main__ import METHOD
main(METHOD)
'''


def test_extract_command_resumes_after_sigkill(cohort, tmp_path):
    """A real `extract` process is SIGKILLed mid-way; the rerun skips the finished slide and redoes the rest."""
    slides_dir, _ = cohort
    sub = tmp_path / "slides"
    sub.mkdir()
    args = [
        "extract",
        f"data.slides_dir={sub}",
        f"data.work_dir={tmp_path / 'work'}",
        "extract.input_size=32",
        "extract.num_workers=0",
        "extract.batch_size=4",
        "extract.allow_random_weights=true",
    ]
    paths = cohort_paths(compose("m4", *args[1:]))
    features = paths.features_dir
    candidates = sorted(slides_dir.glob("*.tiff"))[:5]
    coords = tile_into(candidates, paths.patches_dir)
    slides = [p for p in candidates if len(coords[p.stem])]  # slides with tissue patches
    assert len(slides) >= 3
    for p in candidates:
        if p not in slides:
            (paths.patches_dir / f"{p.stem}.h5").unlink()
    for p in slides:
        os.symlink(p, sub / p.name)
    wrapper = tmp_path / "killable.py"
    wrapper.write_text(KILL_WRAPPER)
    marker = tmp_path / "marker"
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(wrapper), *args, f"hydra.run.dir={tmp_path / 'run1'}"],
        cwd=REPO,
        env={**cli_env(), "M4_TEST_MARKER": str(marker)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 240
        while not marker.exists():
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.time() < deadline, "extract never reached the second slide"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    log.close()
    first, second = marker.read_text().split()
    assert m4extract.is_done(features, first) and not m4extract.is_done(features, second)
    assert leftovers(features)  # the half-written .h5 of the second slide
    stamps = [p.stat().st_mtime_ns for p in m4extract.output_paths(features, first)]

    done = subprocess.run(
        [sys.executable, "-m", "methods.m4", *args, f"hydra.run.dir={tmp_path / 'run2'}"],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = {r["item"]: r["status"] for r in json.loads((tmp_path / "run2" / "extract_summary.json").read_text())}
    assert summary[first] == "skipped"
    assert summary[second] == "done"
    assert sorted(summary.values()) == ["done"] * (len(slides) - 1) + ["skipped"]
    assert [p.stat().st_mtime_ns for p in m4extract.output_paths(features, first)] == stamps
    assert not leftovers(features)
    for p in slides:
        sid = p.stem
        with h5py.File(m4extract.output_paths(features, sid)[0], "r") as f:
            assert f["features"].shape[0] == len(read_coords(paths.patches_dir / f"{sid}.h5").coords)
            np.testing.assert_array_equal(f["features"][:], m4extract.load_features(features, sid).numpy())


# ---------------------------------------------------------------------------------------------------------------------
# Bad slides


def corrupt_level0_tiles(src: Path, dst: Path) -> None:
    """Copy a slide and overwrite every level-0 tile with garbage: it still opens and has a thumbnail, but level-0
    reads fail (a "Corrupt JPEG data"-like error in the middle of extraction)."""
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        spans = list(zip(page.dataoffsets, page.databytecounts, strict=True))
    rng = np.random.default_rng(0)
    for offset, count in spans:
        data[offset : offset + count] = rng.integers(0, 256, count, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))


def test_unreadable_patches_fail_one_slide_and_the_others_finish(cohort, backbone, tmp_path):
    slides_dir, _ = cohort
    good = sorted(slides_dir.glob("*.tiff"))[:2]
    bad = tmp_path / "bad.tiff"
    corrupt_level0_tiles(good[0], bad)
    result = tile_slide(bad, TileConfig())  # the thumbnail comes from an intact level
    assert len(result.coords) > 0
    slides = [good[0], bad, good[1]]
    patches, features = tmp_path / "patches", tmp_path / "features"
    tile_into(slides, patches)
    jobs, outcomes = m4extract.plan_jobs(slides, patches, features)
    assert outcomes == [] and len(jobs) == 3
    outcomes = {o.item: o for o in m4extract.extract(jobs, backbone, features, FAST, progress=False)}
    assert outcomes["bad"].status == "failed" and "Error" in outcomes["bad"].message
    assert outcomes[good[0].stem].status == "done" and outcomes[good[1].stem].status == "done"
    assert not any(p.exists() for p in m4extract.output_paths(features, "bad"))
    assert m4extract.is_done(features, good[1].stem)


def test_plan_jobs_reports_missing_coords_garbage_and_empty_slides(cohort, tmp_path):
    from methods.m4.slides import render_slide, write_pyramid_tiff

    slides_dir, _ = cohort
    good = sorted(slides_dir.glob("*.tiff"))[0]
    garbage = tmp_path / "garbage.tiff"
    garbage.write_bytes(b"II*\x00" + os.urandom(2000))
    blank = tmp_path / "blank.tiff"
    write_pyramid_tiff(blank, render_slide((0, 0, 0, 0), 256, 256, seed=1, tissue=False))
    untiled = tmp_path / "untiled.tiff"
    shutil.copy(good, untiled)
    patches = tmp_path / "patches"
    tile_into([good, blank], patches)
    tile_into([good], tmp_path / "other")
    shutil.copy(tmp_path / "other" / f"{good.stem}.h5", patches / "garbage.h5")  # coords exist, the slide is corrupt
    jobs, outcomes = m4extract.plan_jobs([good, garbage, blank, untiled], patches, tmp_path / "features")
    status = {o.item: (o.status, o.message) for o in outcomes}
    assert [j.slide_id for j in jobs] == [good.stem]
    assert status["garbage"][0] == "failed" and "OpenSlide" in status["garbage"][1]
    assert status["blank"] == ("empty", "no tissue patches")
    assert status["untiled"][0] == "failed" and "run tile first" in status["untiled"][1]
    (patches / f"untiled{m4extract.TILE_FAILED}").write_text("level-0 mpp 352.8 is coarser than the target\n")
    _, outcomes = m4extract.plan_jobs([untiled], patches, tmp_path / "features")
    assert (
        outcomes[0].message == "no coordinates: tiling this slide failed (level-0 mpp 352.8 is coarser than the target)"
    )


def test_shards_split_the_slides_and_together_cover_them(extracted, tmp_path):
    """`shard=i num_shards=n` (a Slurm array): disjoint slices of the slides whose union is the whole cohort."""
    from methods.m4 import commands

    slides, patches, _, _ = extracted
    sub = tmp_path / "slides"
    sub.mkdir()
    for p in slides:
        os.symlink(p, sub / p.name)
    seen = []
    for shard in (0, 1):
        cfg = compose(
            "m4",
            f"data.slides_dir={sub}",
            f"data.work_dir={tmp_path / 'work'}",
            "extract.input_size=32",
            "extract.num_workers=0",
            "extract.allow_random_weights=true",
            f"shard={shard}",
            "num_shards=2",
        )
        paths = cohort_paths(cfg)
        if shard == 0:
            shutil.copytree(patches, paths.patches_dir)
        with pytest.warns(UserWarning, match="RANDOM"):
            metrics = commands.extract(cfg, tmp_path)
        assert metrics["extract/done"] > 0 and metrics["extract/failed"] == 0
        summary = json.loads((tmp_path / f"extract_summary.shard-0{shard}-of-02.json").read_text())
        assert all(o["status"] == "done" for o in summary)
        seen.append({o["item"] for o in summary})
    assert not (seen[0] & seen[1]) and seen[0] | seen[1] == {p.stem for p in slides}
    assert all(m4extract.is_done(paths.features_dir, p.stem) for p in slides)

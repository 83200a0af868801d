"""M4: the model against the official shapes and counts, slides through OpenSlide, tiling, extraction, splits, metrics."""
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import openslide
import pytest
import torch

from common.errors import UserError
from methods.m4 import data as m4data
from methods.m4 import extract as m4extract
from methods.m4.metrics import binary_metrics
from methods.m4.model import build_model, count_parameters, transfer_experts
from methods.m4.slides import make_cohort, render_slide, write_pyramid_tiff
from methods.m4.tiling import TileParams, list_slides, read_coords, tile_slide, write_coords

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    slides, labels = make_cohort(root, n_patients=8, height=512, width=768, workers=1, seed=3)
    return slides, labels


def test_parameter_counts_match_the_official_code():
    assert count_parameters(build_model("m4")) == 7_462_613
    assert count_parameters(build_model("m4", batched=False)) == 7_462_613
    assert count_parameters(build_model("mmoe")) == 6_179_925
    assert count_parameters(build_model("amil")) == 1_312_514


@pytest.mark.parametrize("n", [1, 7, 16, 50])
def test_forward_shapes_and_gates(n):
    torch.manual_seed(0)
    x = torch.randn(n, 64)
    m4 = build_model("m4", feat_input=64, tasks=3, num_expert=2, hidden=32).eval()
    probs, attn = m4(x, return_attention=True)
    assert probs.shape == (3,) and bool(((probs > 0) & (probs < 1)).all())
    assert attn.shape == (3, n)
    gates = m4.gates(x)
    assert gates.shape == (3, 4, 2)
    torch.testing.assert_close(gates.sum(-1), torch.ones(3, 4))
    assert build_model("mmoe", feat_input=64, tasks=3, num_expert=2, hidden=32).eval()(x).shape == (3,)
    assert build_model("amil", feat_input=64, hidden=32).eval()(x).shape == (1,)


def test_batched_experts_equal_one_after_another():
    torch.manual_seed(0)
    batched = build_model("m4", feat_input=96, tasks=4, num_expert=3, hidden=64).eval()
    sequential = transfer_experts(batched, batched=False).eval()
    assert not sequential.batched and batched.batched
    x = torch.randn(23, 96)  # not a square: exercises the padding
    with torch.no_grad():
        torch.testing.assert_close(batched(x), sequential(x), rtol=1e-4, atol=1e-5)
        back = transfer_experts(sequential, batched=True).eval()
        torch.testing.assert_close(back(x), batched(x), rtol=1e-5, atol=1e-6)


def test_synthetic_slide_opens_with_levels_and_mpp(tmp_path):
    path = tmp_path / "s.tiff"
    write_pyramid_tiff(path, render_slide((1, 0, 1, 0), 512, 768, seed=1), mpp=0.5, n_levels=3)
    with openslide.OpenSlide(str(path)) as s:
        assert openslide.OpenSlide.detect_format(str(path)) == "generic-tiff"
        assert s.level_dimensions == ((768, 512), (384, 256), (192, 128))
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)


def test_tiling_at_20x_from_a_40x_level0(tmp_path):
    path = tmp_path / "s40.tiff"
    write_pyramid_tiff(path, render_slide((1, 1, 0, 0), 1536, 2048, seed=2, mpp=0.25), mpp=0.25, n_levels=3)
    result = tile_slide(path, TileParams(patch_size=256, target_mpp=0.5))
    assert result.plan.size_level0 == 512  # 256 px at 0.5 mpp cover 512 px of a 0.25 mpp level 0
    assert len(result.coords) > 0 and (result.coords % 512 == 0).all()
    assert (result.coords[:, 0] + 512 <= 2048).all() and (result.coords[:, 1] + 512 <= 1536).all()
    with openslide.OpenSlide(str(path)) as s:
        level = s.level_downsamples.index(min(s.level_downsamples, key=lambda d: abs(d - 2)))
        for x, y in result.coords[:5]:
            patch = np.asarray(s.read_region((int(x), int(y)), level, (256, 256)).convert("RGB"), np.float32)
            assert patch.mean() < 230  # tissue, not the 240-ish glass
        write_coords(tmp_path / "s40.h5", result, s)
    with h5py.File(tmp_path / "s40.h5") as f:
        assert {"patch_size", "patch_level"} <= set(f["coords"].attrs)
    np.testing.assert_array_equal(read_coords(tmp_path / "s40.h5").coords, result.coords)


def test_extract_writes_clam_layout_and_resumes_after_a_kill(cohort, tmp_path):
    slides_dir, _ = cohort
    slides = list_slides(slides_dir)[:3]
    patches, feats = tmp_path / "patches", tmp_path / "features"
    with_patches = []
    for p in slides:
        r = tile_slide(p, TileParams())
        with openslide.OpenSlide(str(p)) as s:
            write_coords(patches / f"{p.stem}.h5", r, s)
        with_patches.append(p)
    backbone = m4extract.build_backbone("resnet18", "random", allow_random_weights=True)
    jobs, _ = m4extract.plan_jobs(with_patches, patches, feats)
    outcomes = m4extract.extract(jobs, backbone, feats, input_size=32, batch_size=16, num_workers=0, progress=False)
    assert sorted(o.status for o in outcomes) == ["done"] * 3
    sid = slides[0].stem
    h5_path, pt_path = m4extract.output_paths(feats, sid)
    with h5py.File(h5_path) as f:
        assert f["features"].shape == (len(read_coords(patches / f"{sid}.h5").coords), 512)
        np.testing.assert_allclose(f["features"][:], torch.load(pt_path, weights_only=True).numpy())

    # A kill mid-write leaves a temp file and no final h5: that slide is redone, the others are skipped untouched.
    killed = slides[1].stem
    h5_killed, _ = m4extract.output_paths(feats, killed)
    h5_killed.unlink()
    stale = h5_killed.with_name(f".{h5_killed.name}.tmp-99999")
    stale.write_bytes(b"half")
    before = pt_path.stat().st_mtime_ns
    jobs, outcomes = m4extract.plan_jobs(with_patches, patches, feats)
    assert [j.slide_id for j in jobs] == [killed] and not stale.exists()
    assert sorted(o.status for o in outcomes) == ["skipped", "skipped"]
    m4extract.extract(jobs, backbone, feats, input_size=32, batch_size=16, num_workers=0, progress=False)
    assert m4extract.is_done(feats, killed) and pt_path.stat().st_mtime_ns == before


def test_patient_level_splits_never_share_a_patient(cohort):
    _, labels_csv = cohort
    labels = m4data.read_labels(labels_csv)
    assert len(set(labels.case_ids)) < len(labels.case_ids)  # some patients have two slides
    splits = m4data.official_splits(labels, n_splits=3)
    assert len({tuple(s.test) for s in splits}) == 1  # the test set is fixed across repeats
    for split in splits + m4data.kfold_splits(labels, k=3):
        sets = [{labels.case_ids[i] for i in part} for part in (split.train, split.val, split.test)]
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
        assert len(split.train) + len(split.val) + len(split.test) == len(labels.case_ids)


def test_one_class_gene_has_nan_auc_with_a_note():
    metrics, note = binary_metrics(np.zeros(6), np.linspace(0.1, 0.9, 6))
    assert np.isnan(metrics["auc"]) and "AUC undefined" in note and metrics["spec"] == pytest.approx(3 / 6)


def test_labels_naming_slides_without_features_list_them(cohort, tmp_path):
    _, labels_csv = cohort
    labels = m4data.read_labels(labels_csv)
    with pytest.raises(UserError) as err:
        m4data.check_features(labels, tmp_path)
    assert labels.slide_ids[0] in str(err.value) and labels.slide_ids[-1] in str(err.value)


def test_corrupt_and_blank_slides_are_reported_while_the_others_finish(cohort, tmp_path):
    slides_dir, _ = cohort
    mixed = tmp_path / "slides"
    mixed.mkdir()
    for p in list_slides(slides_dir)[:2]:
        os.symlink(p, mixed / p.name)
    (mixed / "corrupt.tiff").write_bytes(b"II*\x00" + os.urandom(4000))
    write_pyramid_tiff(mixed / "blank.tiff", render_slide((0, 0, 0, 0), 512, 768, seed=5, tissue=False))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "methods.m4", "tile", f"data.slides_dir={mixed}", f"data.work_dir={tmp_path / 'work'}",
         f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "1 of 4 slides failed" in proc.stderr and "corrupt" in proc.stderr
    summary = {r["slide_id"]: r for r in json.loads((tmp_path / "run" / "tile_summary.json").read_text())}
    assert summary["blank"]["status"] == "empty" and summary["blank"]["n_patches"] == 0
    assert sorted(r["status"] for r in summary.values()) == ["done", "done", "empty", "failed"]
    assert len(list((tmp_path / "work" / "patches").glob("*.h5"))) == 3  # the blank slide's empty coords too


def test_train_eval_heatmap_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    small = [f"cache_dir={tmp_path / 'cache'}", "synthetic.n_patients=12", "synthetic.height=512", "synthetic.width=768",
             "extract.input_size=32", "extract.num_workers=0", "trainer.epochs=2", "train.n_splits=2"]
    run = tmp_path / "train"
    proc = subprocess.run([sys.executable, "-m", "methods.m4", "train", *small, f"hydra.run.dir={run}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "results.json").read_text())["metrics"]
    for model in ("m4", "mmoe", "amil"):
        auc = metrics[f"{model}/test/mean/auc_mean"]
        assert np.isnan(auc) or 0.0 <= auc <= 1.0
    assert list((run / "m4" / "roc").glob("*.png")) or list(run.rglob("*roc*.png"))
    for command, key in (("eval", "eval.run_dir"), ("heatmap", "heatmap.run_dir")):
        out = tmp_path / command
        proc = subprocess.run([sys.executable, "-m", "methods.m4", command, *small, f"{key}={run}", f"hydra.run.dir={out}"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((tmp_path / "heatmap").rglob("*.png"))

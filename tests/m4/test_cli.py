"""`python -m methods.m4 <command>` end to end: bad slides in tile/extract, features made elsewhere, the synthetic demo."""

from __future__ import annotations

import json
import math
import os
import re

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from common.config import compose
from common.errors import UserError
from common.items import ItemsFailed
from methods.m4 import commands
from methods.m4.cohort import cohort_paths
from methods.m4.data import check_features, read_labels
from methods.m4.slides import render_slide, write_pyramid_tiff
from tests.m4.conftest import HEIGHT, WIDTH, run_cli, small_real_run, write_plain_tiff
from tests.m4.test_extract import corrupt_level0_tiles


def test_corrupt_and_blank_slides_are_reported_while_the_others_finish(cohort, tmp_path):
    slides_dir, _ = cohort
    mixed = tmp_path / "slides"
    mixed.mkdir()
    good = sorted(slides_dir.glob("*.tiff"))[:2]
    for p in good:
        os.symlink(p, mixed / p.name)
    (mixed / "garbage.tiff").write_bytes(b"II*\x00" + os.urandom(4000))  # not a slide at all
    data = good[0].read_bytes()
    (mixed / "truncated.tiff").write_bytes(data[: len(data) // 2])  # a download cut in half
    corrupt_level0_tiles(good[0], mixed / "badtiles.tiff")  # opens and tiles, its level-0 tiles cannot be decoded
    write_pyramid_tiff(mixed / "blank.tiff", render_slide((0, 0, 0, 0), HEIGHT, WIDTH, seed=5, tissue=False))
    common = small_real_run(mixed, tmp_path / "work")
    paths = cohort_paths(compose("m4", *common))

    proc = run_cli("tile", *common, f"hydra.run.dir={tmp_path / 'tile'}", timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1  # one line
    assert (
        proc.stderr.startswith("error: tile: 2 of 6 items failed")
        and "garbage" in proc.stderr
        and "truncated" in proc.stderr
    )
    summary = {r["item"]: r for r in json.loads((tmp_path / "tile" / "tile_summary.json").read_text())}
    assert {k: v["status"] for k, v in summary.items()} == {
        good[0].stem: "done",
        good[1].stem: "done",
        "badtiles": "done",
        "blank": "empty",
        "garbage": "failed",
        "truncated": "failed",
    }
    assert summary["blank"]["count"] == 0
    assert "blank: no tissue" in proc.stdout and "WARNING" in proc.stdout  # recorded with a warning, not a crash
    assert "tile: 3 done, 0 skipped, 1 empty, 2 failed" in proc.stdout
    assert sorted(p.stem for p in paths.patches_dir.glob("*.h5")) == sorted(
        [good[0].stem, good[1].stem, "badtiles", "blank"]
    )

    proc = run_cli("extract", *common, f"hydra.run.dir={tmp_path / 'extract'}", timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]  # before it only the random-weights warning
    assert last.startswith("error: extract: 3 of 6 items failed") and "badtiles" in last and "garbage" in last
    summary = {r["item"]: r for r in json.loads((tmp_path / "extract" / "extract_summary.json").read_text())}
    assert {k: v["status"] for k, v in summary.items()} == {
        good[0].stem: "done",
        good[1].stem: "done",
        "badtiles": "failed",
        "blank": "empty",
        "garbage": "failed",
        "truncated": "failed",
    }
    assert summary["garbage"]["message"].startswith("no coordinates: tiling this slide failed (OpenSlide")
    assert "Error" in summary["badtiles"]["message"]
    features = paths.features_dir
    assert sorted(p.stem for p in (features / "h5_files").glob("*.h5")) == sorted(p.stem for p in good)
    assert not list(features.rglob("*.tmp-*"))


def _external_features(root, n_patients=10, dim=16):
    """A CLAM-style features dir (pt_files only) and labels: gene A varies, gene B is 0 for every patient."""
    rng = np.random.default_rng(0)
    (root / "features" / "pt_files").mkdir(parents=True)
    rows = []
    for p in range(n_patients):
        a = p % 2
        for s in range(1 + (p % 3 == 0)):
            sid = f"P{p:02d}-S{s}"
            x = rng.normal(a, 1.0, (int(rng.integers(3, 12)), dim)).astype(np.float32)
            torch.save(torch.from_numpy(x), root / "features" / "pt_files" / f"{sid}.pt")
            rows.append({"case_id": f"P{p:02d}", "slide_id": sid, "A": a, "B": 0})
    labels = root / "labels.csv"
    pd.DataFrame(rows).to_csv(labels, index=False)
    return root / "features", labels, rows


def test_train_on_features_made_elsewhere_with_a_one_class_gene(tmp_path):
    features, labels, rows = _external_features(tmp_path)
    run = tmp_path / "run"
    proc = run_cli(
        "train",
        f"data.features_dir={features}",
        f"data.labels_csv={labels}",
        "train.models=[m4,amil]",
        "train.n_splits=1",
        "trainer.epochs=1",
        "mil.num_expert=2",
        "mil.hidden=32",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run}",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "note: m4 split0: B: only class 0" in proc.stdout and "AUC undefined" in proc.stdout
    metrics = json.loads((run / "results.json").read_text())["metrics"]
    for model in ("m4", "amil"):
        assert math.isnan(metrics[f"{model}/test/B/auc_mean"])
        assert 0.0 <= metrics[f"{model}/test/B/acc_mean"] <= 1.0  # the other metrics are still computed
        assert not math.isnan(metrics[f"{model}/test/mean/auc_mean"]) or math.isnan(metrics[f"{model}/test/A/auc_mean"])
    assert metrics["m4/parameters"] > 0
    splits = json.loads((run / "splits.json").read_text())
    case = {r["slide_id"]: r["case_id"] for r in rows}
    parts = [{case[s] for s in splits[0][k]} for k in ("train", "val", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    preds = pd.read_csv(run / "m4" / "predictions_test.csv")
    assert set(preds.slide_id) == set(splits[0]["test"]) and {"A_prob", "B_prob", "A_label", "B_label"} <= set(preds)


def test_labels_naming_slides_without_features_stop_with_one_error(tmp_path):
    features, labels, _ = _external_features(tmp_path, n_patients=6)
    df = pd.read_csv(labels)
    extra = pd.DataFrame(
        [
            {"case_id": "X1", "slide_id": "GHOST-1", "A": 1, "B": 0},
            {"case_id": "X2", "slide_id": "GHOST-2", "A": 0, "B": 0},
        ]
    )
    pd.concat([df, extra]).to_csv(labels, index=False)
    proc = run_cli(
        "train",
        f"data.features_dir={features}",
        f"data.labels_csv={labels}",
        "train.models=[m4]",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: 2 labelled slides have no features")
    assert "GHOST-1" in proc.stderr and "GHOST-2" in proc.stderr
    assert not (tmp_path / "run" / "m4").exists()  # nothing was trained


def test_train_eval_heatmap_end_to_end(tmp_path):
    small = [
        f"cache_dir={tmp_path / 'cache'}",
        "synthetic.n_patients=12",
        f"synthetic.height={HEIGHT}",
        f"synthetic.width={WIDTH}",
        "extract.input_size=32",
        "extract.num_workers=0",
        "trainer.epochs=2",
        "train.n_splits=2",
    ]
    run = tmp_path / "train"
    proc = run_cli("train", *small, f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "per-gene test AUC" in proc.stdout and "| mean |" in proc.stdout
    metrics = json.loads((run / "results.json").read_text())["metrics"]
    genes = ["TP53", "PIK3CA", "CDH1", "GATA3"]
    for model in ("m4", "mmoe", "amil"):
        for gene in [*genes, "mean"]:
            auc = metrics[f"{model}/test/{gene}/auc_mean"]
            assert math.isnan(auc) or 0.0 <= auc <= 1.0
        assert sorted(p.name for p in (run / model / "roc").glob("*.png")) == sorted(f"roc_{g}.png" for g in genes)
        assert (run / model / "predictions_test.csv").is_file()
    assert metrics["m4/parameters"] > metrics["amil/parameters"]
    # Models saved per split (and per gene for the single-task ABMIL).
    assert (run / "m4" / "split1" / "model" / "model.safetensors").is_file()
    assert (run / "amil" / "split0" / "GATA3" / "model" / "model.json").is_file()
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits) == 2 and splits[0]["test"] == splits[1]["test"]

    proc = run_cli("eval", *small, f"eval.run_dir={run}", f"hydra.run.dir={tmp_path / 'eval'}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((tmp_path / "eval" / "results.json").read_text())["metrics"]
    # The tuned-threshold metrics (thresholds kept in model.json) come back the same too.
    keys = ("m4/test/mean/auc_mean", "mmoe/test/TP53/f1_mean", "amil/test/CDH1/acc_mean", "m4/test/TP53/f1_tuned_mean")
    for key in (*keys, "amil/test/mean/sens_tuned_mean", "mmoe/test/GATA3/threshold_tuned_mean"):
        assert again[key] == metrics[key] or (math.isnan(again[key]) and math.isnan(metrics[key])), key

    proc = run_cli("heatmap", *small, f"heatmap.run_dir={run}", f"hydra.run.dir={tmp_path / 'heatmap'}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pngs = sorted((tmp_path / "heatmap").glob("*.png"))
    assert len(pngs) == 2 * len(genes)  # max_slides=2 test slides, one PNG per gene
    assert {p.name.rsplit("_", 1)[1] for p in pngs} == {f"{g}.png" for g in genes}


TCGA = "TCGA-3C-AALI-01Z-00-DX2.CF4496E0-AB52-4F3E-BDF5-C34833B91B7C"


def test_slides_without_a_usable_resolution_fail_alone_and_name_the_fix(cohort, tmp_path):
    """A 72-dpi TIFF and a TIFF without resolution are per-slide failures with their reason; the TCGA slide keeps its
    whole name through tile and extract; data.mpp_csv and data.slide_mpp then let every slide tile."""
    slides_dir, _ = cohort
    mixed = tmp_path / "slides"
    mixed.mkdir()
    os.symlink(sorted(slides_dir.glob("*.tiff"))[0], mixed / f"{TCGA}.svs")
    rgb = render_slide((1, 0, 1, 0), HEIGHT, WIDTH, seed=7)
    write_plain_tiff(mixed / "dpi72.tiff", rgb, dpi=72)
    write_plain_tiff(mixed / "nompp.ome.tiff", rgb)
    common = small_real_run(mixed, tmp_path / "work")

    with pytest.raises(ItemsFailed, match="^tile: 2 of 3 items failed"):
        commands.tile(compose("m4", "command=tile", *common), tmp_path / "tile")
    summary = {r["item"]: r for r in json.loads((tmp_path / "tile" / "tile_summary.json").read_text())}
    assert {k: v["status"] for k, v in summary.items()} == {TCGA: "done", "dpi72": "failed", "nompp": "failed"}
    assert summary["dpi72"]["message"].startswith("level-0 mpp 352.8 is coarser than the target 0.5 mpp")
    assert "data.slide_mpp" in summary["nompp"]["message"] and "data.mpp_csv" in summary["nompp"]["message"]

    cfg = compose("m4", "command=extract", *common)
    with pytest.warns(UserWarning, match="RANDOM"), pytest.raises(ItemsFailed, match="2 of 3 items failed"):
        commands.extract(cfg, tmp_path / "extract")
    summary = {r["item"]: r for r in json.loads((tmp_path / "extract" / "extract_summary.json").read_text())}
    assert summary[TCGA]["status"] == "done"
    assert summary["dpi72"]["message"].startswith("no coordinates: tiling this slide failed (level-0 mpp 352.8")
    labels = tmp_path / "labels.csv"  # as TCGA, CLAM and the official M4 CSVs write slide ids: with the UUID
    labels.write_text(f"case_id,slide_id,TP53\nTCGA-3C-AALI,{TCGA},1\n")
    check_features(read_labels(labels), cohort_paths(cfg).features_dir)

    (tmp_path / "mpp.csv").write_text("wsi,mpp\ndpi72.tiff,0.5\n")
    fixed = compose("m4", "command=tile", *common, f"data.mpp_csv={tmp_path / 'mpp.csv'}", "data.slide_mpp=0.5")
    assert commands.tile(fixed, tmp_path / "tile2")["tile/done"] == 3
    assert cohort_paths(fixed).patches_dir != cohort_paths(cfg).patches_dir  # other resolutions, other coordinates


def test_tiling_by_magnification_end_to_end(slide40, tmp_path):
    path, _ = slide40
    (tmp_path / "slides").mkdir()
    os.symlink(path, tmp_path / "slides" / "s40.tiff")
    cfg = compose(
        "m4",
        "command=tile",
        f"data.slides_dir={tmp_path / 'slides'}",
        f"data.work_dir={tmp_path}",
        "tile.target_magnification=20",
    )
    assert commands.tile(cfg, tmp_path / "run")["tile/done"] == 1
    with h5py.File(cohort_paths(cfg).patches_dir / "s40.h5") as f:
        a = dict(f["coords"].attrs)
    assert (a["patch_level"], a["patch_size"], a["patch_size_level0"]) == (1, 256, 512)
    assert a["target_magnification"] == pytest.approx(20) and a["level0_magnification"] == pytest.approx(40)


def _saved_run(root, feat_input: int):
    """A train run dir holding one M4 model trained on `feat_input`-d features, with slide 'a' as its test slide."""
    from common.checkpoint import save_module
    from methods.m4.model import m4

    kwargs = {"feat_input": feat_input, "tasks": 1, "num_expert": 2, "hidden": 8}
    save_module(
        m4(**kwargs),
        root / "m4" / "split0" / "model",
        "m4.model",
        "m4",
        kwargs,
        genes=["A"],
        split="split0",
        test_slides=["a"],
    )
    (root / "splits.json").write_text(json.dumps([{"name": "split0", "train": [], "val": [], "test": ["a"]}]))
    return root


def test_features_of_another_width_are_one_line_in_eval_and_heatmap(tmp_path):
    features = tmp_path / "features"
    (features / "pt_files").mkdir(parents=True)
    torch.save(torch.zeros(4, 16), features / "pt_files" / "a.pt")
    (tmp_path / "labels.csv").write_text("case_id,slide_id,A\np,a,1\n")
    run = _saved_run(tmp_path / "run", feat_input=8)
    data = [f"data.features_dir={features}", f"data.labels_csv={tmp_path / 'labels.csv'}"]
    expected = f"the features in {features} are 16-d but {run / 'm4' / 'split0' / 'model'} was trained on 8-d features"
    with pytest.raises(UserError, match=re.escape(expected)):
        commands.eval(compose("m4", "command=eval", *data, f"eval.run_dir={run}"), tmp_path / "eval")
    (tmp_path / "slides").mkdir()
    cfg = compose("m4", "command=heatmap", *data, f"data.slides_dir={tmp_path / 'slides'}", f"heatmap.run_dir={run}")
    with pytest.raises(UserError, match=re.escape(expected)):
        commands.heatmap(cfg, tmp_path / "heatmap")

"""`python -m methods.m4 <command>` end to end: bad slides in tile/extract, features made elsewhere, the synthetic demo."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import torch

from common.config import compose
from methods.m4.cohort import cohort_paths
from methods.m4.slides import render_slide, write_pyramid_tiff
from tests.m4.conftest import HEIGHT, WIDTH, run_cli
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
    common = [
        f"data.slides_dir={mixed}",
        f"data.work_dir={tmp_path / 'work'}",
        "extract.input_size=32",
        "extract.num_workers=0",
    ]
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
    assert "run tile first" in summary["garbage"]["message"]
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
    for key in ("m4/test/mean/auc_mean", "mmoe/test/TP53/f1_mean", "amil/test/CDH1/acc_mean"):
        assert again[key] == metrics[key] or (math.isnan(again[key]) and math.isnan(metrics[key])), key

    proc = run_cli("heatmap", *small, f"heatmap.run_dir={run}", f"hydra.run.dir={tmp_path / 'heatmap'}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pngs = sorted((tmp_path / "heatmap").glob("*.png"))
    assert len(pngs) == 2 * len(genes)  # max_slides=2 test slides, one PNG per gene
    assert {p.name.rsplit("_", 1)[1] for p in pngs} == {f"{g}.png" for g in genes}

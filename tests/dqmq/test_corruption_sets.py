"""Published corruption benchmarks read in their released layouts, on tiny fixtures written with numpy / PIL as the
releases are (not with our code): CIFAR-10-C (`<corruption>.npy` uint8 [N, 32, 32, 3], five severities of N/5 rows
in order, `labels.npy`) and ImageNet-C (`<corruption>/<severity>/<wnid>/*.JPEG`); `eval` tables them."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import torch
from PIL import Image

from common.checkpoint import save_module
from common.config import compose
from common.errors import UserError
from methods.dqmq import commands
from methods.dqmq.corruption_sets import read_sets
from methods.dqmq.model import QuantModel

PER = 4  # images per severity (the release has 10,000)


def _cifar_c(root, corruptions=("gaussian_noise", "fog")):
    rng = np.random.default_rng(0)
    root.mkdir()
    np.save(root / "labels.npy", np.tile(np.arange(PER) % 3, 5).astype(np.uint8))  # the release's labels are uint8
    for c in corruptions:
        np.save(root / f"{c}.npy", rng.integers(0, 256, (5 * PER, 32, 32, 3), dtype=np.uint8))
    return root


def test_cifar_c_severities_are_the_row_blocks_in_order(tmp_path):
    root = _cifar_c(tmp_path / "CIFAR-10-C")
    sets = list(read_sets(root, 32, [str(i) for i in range(10)]))
    assert [(c, s) for c, s, _, _ in sets] == [(c, s) for c in ("fog", "gaussian_noise") for s in range(1, 6)]
    fog = np.load(root / "fog.npy")
    _, severity, x, y = sets[2]
    assert severity == 3 and torch.equal(x, torch.from_numpy(fog[2 * PER : 3 * PER]).permute(0, 3, 1, 2))
    assert y.tolist() == [0, 1, 2, 0]
    assert len(list(read_sets(root, 16, [str(i) for i in range(10)], limit=2))[0][2]) == 2


def test_cifar_c_files_that_do_not_fit_are_named(tmp_path):
    root = _cifar_c(tmp_path / "c")
    np.save(root / "fog.npy", np.zeros((5 * PER, 32, 32, 3), np.float32))
    with pytest.raises(UserError, match=re.escape(f"{root / 'fog.npy'}: float32 [20, 32, 32, 3]; expected uint8")):
        list(read_sets(root, 32, [str(i) for i in range(10)]))
    np.save(root / "labels.npy", np.arange(7))
    with pytest.raises(UserError, match="labels.npy: shape \\(7,\\); expected \\[N\\] with N a multiple of 5"):
        list(read_sets(root, 32, [str(i) for i in range(10)]))
    root2 = _cifar_c(tmp_path / "c2")
    with pytest.raises(UserError, match="labels outside 0-1"):
        list(read_sets(root2, 32, ["a", "b"]))


def _imagenet_c(root, classes=("n01440764", "n01443537")):
    rng = np.random.default_rng(1)
    for c in ("contrast", "snow"):
        for s in range(1, 6):
            for k in classes:
                (root / c / str(s) / k).mkdir(parents=True)
                for i in range(2):
                    pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(root / c / str(s) / k / f"ILSVRC2012_val_{i:08d}.JPEG")
    return root


def test_imagenet_c_folders_by_corruption_and_severity(tmp_path):
    root = _imagenet_c(tmp_path / "ImageNet-C")
    sets = list(read_sets(root, 16, ["n01440764", "n01443537"]))
    assert [(c, s) for c, s, _, _ in sets] == [(c, s) for c in ("contrast", "snow") for s in range(1, 6)]
    assert all(x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 1, 1] for _, _, x, y in sets)
    with pytest.raises(UserError, match="differ from the training split's"):
        list(read_sets(root, 16, ["n01440764", "n09999999"]))


def test_eval_tables_every_corruption_and_severity(tmp_path):
    """eval with eval.corrupted: each saved model of a run on every set; corruptions.csv and the mean corruption
    accuracy equal the models' accuracies computed here directly."""
    run = tmp_path / "run"
    (run / "levels.json").parent.mkdir()
    (run / "levels.json").write_text("{}")
    kwargs = dict(arch="digits_cnn", num_classes=10, in_chans=3, image_size=8, candidates=[4, 8], mean=[0.5] * 3)
    torch.manual_seed(0)
    models = {}
    for name, method in (("fp", "fp"), ("w8a8", "fixed")):
        kw = {
            **kwargs,
            "method": method,
            "std": [0.25] * 3,
            "width": 4,
            **({"candidates": [8]} if name != "fp" else {}),
        }
        models[name] = QuantModel(**kw).eval()
        if method != "fp":
            models[name].train()
            models[name](torch.rand(8, 3, 8, 8))
            models[name].eval()
        save_module(models[name], run / name / "model", "dqmq.model", "quant", kw)
    root = _cifar_c(tmp_path / "CIFAR-10-C")
    cfg = compose("dqmq", "data.image_size=8", "data.max_test=10", f"eval.run_dir={run}", f"eval.corrupted={root}")
    got = commands._eval_corrupted(cfg, run, ["fp", "w8a8"], [str(i) for i in range(10)], tmp_path)
    with (tmp_path / "corruptions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 5 * 2
    accs = []
    for _, _, x, y in read_sets(root, 8, [str(i) for i in range(10)]):
        with torch.no_grad():
            accs.append(float((models["w8a8"](x.float() / 255).argmax(1) == y).float().mean()))
    assert got["w8a8/mca"] == pytest.approx(np.mean(accs))
    assert [float(r["acc"]) for r in rows if r["method"] == "w8a8"] == pytest.approx(accs)

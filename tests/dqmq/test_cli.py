"""`python -m methods.dqmq train` end to end on a shrunk setting, then `eval` and `export` of that run (in process)."""

from __future__ import annotations

import csv
import json

import pytest

from common.config import compose
from methods.dqmq import commands
from tests.dqmq.conftest import run_cli

SMALL = [
    "data.max_train=150",
    "data.max_test=40",
    "data.copies=1",
    "data.image_size=12",
    "data.corruptions=[gaussian_noise,downsample]",
    "data.severities=[2,5]",
    "net.width=4",
    "quant.bits=[2,4,8]",
    "fixed_bits=[8]",
    "pretrain.trainer.epochs=2",
    "pretrain.trainer.batch_size=32",
    "trainer.epochs=3",
    "trainer.batch_size=32",
    "trainer.save_every=0",  # a checkpoint at every epoch end, as a long run has: a rerun finds one
]


def test_train_then_eval_and_export(tmp_path):
    run = tmp_path / "run"
    common = [*SMALL, f"cache_dir={tmp_path / 'cache'}"]
    proc = run_cli("train", *common, f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "150 train images x 1 quality draws, 40 test images x 5 quality levels" in out
    header = "| method | acc mixed | acc clean | acc corrupted | acc heavy | W bits | A bits |"
    assert header in out
    for name in ("dqmq", "fp", "w8a8", "static"):
        assert f"\n| {name} | " in out and (run / name / "model" / "model.json").is_file()
    assert "| fp | " in out and "| 32 | 32 | 32.00/32.00 -> 32.00/32.00 | 1 | 16 |" in out
    assert all((run / f).is_file() for f in ("pareto.png", "bits_dqmq.png", "bits_static.png", "results.json"))
    with (run / "levels.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 5 and {r["level"] for r in rows} == {
        "clean",
        "gaussian_noise-2",
        "gaussian_noise-5",
        "downsample-2",
        "downsample-5",
    }
    metrics = json.loads((run / "results.json").read_text())["metrics"]
    assert metrics["w8a8/bitops_ratio"] == pytest.approx(64 / 1024) and metrics["w8a8/wbits"] == 8
    # static is fitted to DQMQ's budget: at most it, and not far below on this small network
    assert 0.7 * metrics["static/budget"] <= metrics["static/train_bitops_ratio"] <= metrics["static/budget"] + 1e-12
    assert 2 <= metrics["dqmq/wbits"] <= 8 and 0 <= metrics["dqmq/acc"] <= 1

    # A rerun in the finished run dir with another lambda is refused (it used to "resume" at step 60 of 60 and record
    # the new lambda for a model trained at the old one); results.json stays the first run's.
    again = run_cli("train", *common, "policy.lam=0.5", f"hydra.run.dir={run}", cwd=tmp_path)
    assert again.returncode == 2 and "policy.lam 0.25 -> 0.5" in again.stderr, again.stderr[-3000:]
    assert len(again.stderr.strip().splitlines()) == 1 and "trainer.resume=false" in again.stderr
    assert json.loads((run / "results.json").read_text())["metrics"] == metrics

    # eval of the saved models on the same data gives the train run's numbers
    evaluated = commands.eval(compose("dqmq", *common, f"eval.run_dir={run}"), tmp_path / "eval")
    for key in ("dqmq/acc", "dqmq/bitops_ratio", "static/acc_corrupted", "w8a8/acc_heavy", "fp/acc_clean"):
        assert evaluated[key] == pytest.approx(metrics[key]), key
    assert (tmp_path / "eval" / "levels.json").is_file()

    # export static's bits, then run every level at them: its own predictions, so its own numbers
    done = commands.export(compose("dqmq", *common, f"export.run_dir={run}", "export.method=static"), tmp_path / "exp")
    assert done["export/min_agreement"] == 1.0
    exported = json.loads((tmp_path / "exp" / "bits.json").read_text())
    assert set(exported["levels"]) == {r["level"] for r in rows} and len(exported["layers"]) == 5
    at_bits = commands.eval(
        compose("dqmq", *common, f"eval.run_dir={run}", f"eval.bits_json={tmp_path / 'exp' / 'bits.json'}"),
        tmp_path / "eval_bits",
    )
    assert set(k.split("/")[0] for k in at_bits) == {"static"}
    for key in ("acc", "acc_clean", "acc_corrupted", "bitops_ratio", "wbits"):
        assert at_bits[f"static/{key}"] == pytest.approx(metrics[f"static/{key}"]), key

    # The ONNX deployment of DQMQ (router + QDQ configurations), checked against PyTorch on the test images (this
    # barely trained net's classes lie within rounding of each other: the 99.5% goal is tested in test_onnx.py)
    onnx_dir = tmp_path / "exp_dqmq"
    done = commands.export(compose("dqmq", *common, f"export.run_dir={run}", "export.method=dqmq"), onnx_dir)
    assert done["export/onnx_agreement"] >= 0.8 and done["export/onnx_exact_config"] >= 0.9, done
    manifest = json.loads((onnx_dir / "onnx" / "deploy.json").read_text())
    assert manifest["router"] == "router.onnx" and len(manifest["configs"]) == done["export/onnx_configs"] > 1

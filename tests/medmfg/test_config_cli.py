"""Settings checked at compose time, the preset, help, and the commands end to end on shrunk settings."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from common.cli import command_help
from common.config import compose
from common.errors import UserError
from methods.medmfg.config import METHODS
from tests.medmfg.conftest import run_cli


def test_embedded_default_and_preset():
    cfg = compose("medmfg")
    assert (cfg.backbone.name, cfg.data.image_size, cfg.eval.episodes, cfg.eval.shots) == ("conv4", 32, 600, [1, 5])
    assert cfg.eval.methods == METHODS and cfg.dc.alpha == 0.21 and cfg.dc.k == 2
    paper = compose("medmfg", "+experiment=medmfg/bscd_isic", paths=False)
    assert (paper.backbone.name, paper.data.image_size, paper.dc.samples) == ("resnet10t", 224, 750)
    assert paper.data.target == "data/ISIC" and paper.eval.shots == [1, 5, 20, 50] and paper.cpu_threads is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("backbone.weights=hub", "conv4 has no pretrained weights"),
        ("backbone.name=resnet_that_is_not", "neither conv4 nor a timm model name"),
        ("eval.methods=[protonet,foo]", "eval.methods='foo': not one of protonet"),
        ("eval.shots=[]", "eval.shots is empty"),
        ("eval.ways=1", "eval.ways=1: must be >= 2"),
        ("dc.k=40", "dc.k=40: offline source has 32 classes"),
    ],
)
def test_bad_settings_are_one_line_errors(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        compose("medmfg", override)


def test_help_describes_the_keys():
    from methods.medmfg.__main__ import METHOD

    text = command_help(METHOD, "train", [])
    assert "generator.samples=100" in text and "M: features generated per novel class" in text
    assert "dc.alpha=0.21" in text and "eval.episodes=600" in text


SHRUNK = [
    "data.image_size=16",
    "trainer.epochs=1",
    "generator.episodes=80",
    "eval.episodes=10",
    "dc.samples=20",
    "generator.samples=20",
    "logger.kind=none",
]


def test_train_then_eval_and_tsne(tmp_path):
    """`train` end to end (pretrain, features, generator, the table); `eval` and `tsne` then reuse its stages and
    `eval` reproduces its numbers; with other stage settings they refuse to train."""
    from methods.medmfg import commands

    cache = f"cache_dir={tmp_path / 'cache'}"
    out = run_cli("train", *SHRUNK, cache, f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 0, out.stderr[-2000:]
    table = out.stdout[out.stdout.index("| method |") :]
    for name in METHODS:
        assert f"| {name} |" in table
    assert "5-way 1-shot" in table and "5-way 5-shot" in table
    metrics = json.loads((tmp_path / "run" / "results.json").read_text())["metrics"]
    assert 0 < metrics["1shot/medmfg/acc"] <= 100 and metrics["5shot/dc/ci95"] >= 0
    assert metrics["pretrain/source_val_acc"] > 1 / 32  # better than chance after one epoch
    rows = list(csv.DictReader((tmp_path / "run" / "episodes.csv").open()))
    assert len(rows) == 2 * len(METHODS) * 10

    cfg = compose("medmfg", *SHRUNK, cache)
    again = commands.eval(cfg, tmp_path)
    assert again["1shot/medmfg/acc"] == pytest.approx(metrics["1shot/medmfg/acc"])
    assert again["5shot/dc+medmfg/acc"] == pytest.approx(metrics["5shot/dc+medmfg/acc"])
    plot = commands.tsne(cfg, tmp_path)
    assert Path(tmp_path / "tsne.png").stat().st_size > 10_000
    assert 0 <= plot["tsne/generated_nearest_own_class"] <= 1

    with pytest.raises(UserError, match="no generator trained with these settings"):
        commands.eval(compose("medmfg", *SHRUNK, cache, "generator.latent=8"), tmp_path)
    with pytest.raises(UserError, match="no backbone trained with these settings"):
        commands.tsne(compose("medmfg", *SHRUNK, cache, "trainer.epochs=2"), tmp_path)


def test_cli_bad_input_is_exit_2(tmp_path):
    out = run_cli("eval", "eval.ways=29", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: config: eval.shots=5 + eval.queries: 29-way")

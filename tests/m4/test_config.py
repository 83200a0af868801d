"""Settings: declared once with their checks, presets and cohorts that compose, caches keyed by what changes them, bad
values caught in one line before anything is written, help for every command."""

from __future__ import annotations

import re

import pytest

from common.config import compose
from common.errors import UserError
from methods.m4.cohort import cohort_paths
from tests.m4.conftest import run_cli


def test_demo_and_presets_compose_to_the_papers_setting():
    demo = compose("m4")
    assert demo.extract.weights == "random" and demo.train.n_splits == 2 and demo.trainer.epochs == 15
    paper = compose(
        "m4", "+experiment=m4/official", "+m4/cohort=brca", "data.features_dir=feats", "seed=7", paths=False
    )
    assert paper.data.cohort == "brca" and len(paper.data.genes) == 10
    assert (paper.extract.backbone, paper.extract.weights, paper.extract.input_size) == ("retccl", "hub", 256)
    assert (paper.mil.num_expert, paper.mil.hidden, paper.train.n_splits) == (5, 512, 5)
    t = paper.trainer
    assert (t.epochs, t.lr, t.weight_decay, t.optimizer, t.scheduler, t.batch_size) == (
        32,
        1e-4,
        4e-5,
        "adam",
        "cosine_with_min_lr",
        1,
    )
    assert t.scheduler_kwargs == {"min_lr_rate": 0.1} and t.max_grad_norm == 0 and t.seed == 7
    assert compose("m4", "+experiment=m4/kfold").train.protocol == "kfold"


@pytest.mark.parametrize(
    "override, message",
    [
        ("mil.hidden=30", "mil.hidden=30 must split into 4 proxy segments"),
        ("train.val_size=1.0", "train.val_size=1.0: must be < 1"),
        ("train.protocol=kfold train.n_splits=1", "kfold needs at least 2 folds"),
        ("data.slides_dir=.", "data.slides_dir is set but not data.work_dir"),
    ],
)
def test_cross_field_checks(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        compose("m4", *override.split())


def test_the_demos_random_weights_do_not_carry_over_to_real_slides(tmp_path):
    """conf/m4.yaml's random ResNet-18 is the synthetic demo's: on real slides a command that extracts (or reads
    features keyed by the encoder) stops before anything runs, unless random weights are asked for explicitly."""
    real = [f"data.slides_dir={tmp_path}", f"data.work_dir={tmp_path}"]
    for command in ("extract", "train"):
        with pytest.raises(
            UserError, match=r"extract\.weights=random \(the synthetic demo's resnet18\) .* real slides"
        ):
            compose("m4", f"command={command}", *real)
    assert compose("m4", "command=tile", *real).extract.weights == "random"  # tiling makes no features
    assert compose("m4", "command=extract", *real, "extract.allow_random_weights=true").extract.weights == "random"
    assert compose("m4", "command=extract", *real, "extract.backbone=uni_v1", f"extract.weights={tmp_path}")
    assert compose("m4", "command=extract").extract.weights == "random"  # the synthetic demo


# ---------------------------------------------------------------------------------------------------------------------
# Settings: caches keyed by what changes them, bad values caught before anything is written, per-command help


def test_tile_and_extract_settings_key_their_caches(tmp_path):
    def paths(*overrides: str):
        return cohort_paths(compose("m4", f"data.work_dir={tmp_path}", *overrides), make_synthetic=False)

    base = paths()
    assert base.patches_dir.parent == tmp_path / "patches"
    assert base.features_dir.parent == tmp_path / "features" and base.features_dir.name.startswith("resnet18-")
    mpp_csv = tmp_path / "mpp.csv"
    mpp_csv.write_text("wsi,mpp\na.svs,0.25\n")
    changes = ("tile.patch_size=224", "tile.target_mpp=1.0", "tile.pad_edges=true", "data.slide_mpp=0.25")
    for changed in (*changes, f"data.mpp_csv={mpp_csv}"):
        other = paths(changed)
        assert other.patches_dir != base.patches_dir and other.features_dir != base.features_dir, changed
    for changed in ("extract.input_size=224", "extract.backbone=resnet34"):
        other = paths(changed)
        assert other.patches_dir == base.patches_dir and other.features_dir != base.features_dir, changed
    for same in ("extract.batch_size=7", "extract.num_workers=0", "extract.device=cpu", "train.n_splits=3"):
        assert paths(same) == base, same
    edited = paths(f"data.mpp_csv={mpp_csv}")
    mpp_csv.write_text("wsi,mpp\na.svs,0.2525\n")  # the same file, another value: other coordinates
    assert paths(f"data.mpp_csv={mpp_csv}").patches_dir != edited.patches_dir
    given = tmp_path / "features_made_elsewhere"
    given.mkdir()
    assert paths(f"data.features_dir={given}").features_dir == given  # used as it is


@pytest.mark.parametrize(
    "override, message",
    [
        ("extract.batch_size=-1", "extract.batch_size=-1: must be >= 1"),
        ("extract.num_workers=-1", "extract.num_workers=-1: must be >= 0"),
        ("trainer.lr=-1", "trainer.lr=-1.0: must be > 0"),
        ("tile.overlap=256", "tile.overlap=256 must be smaller than tile.patch_size=256"),
        ("train.models=[m4,nope]", "train.models='nope': not one of m4, mmoe, amil"),
        ("data.slides_dir=/does/not/exist", "data.slides_dir=/does/not/exist: path does not exist"),
        ("model.hidden=64", "model: unknown key"),  # the MIL architecture is `mil:`
    ],
)
def test_bad_settings_are_one_line_before_anything_is_written(tmp_path, override, message):
    run, work, cache = tmp_path / "run", tmp_path / "work", tmp_path / "cache"
    proc = run_cli(
        "train",
        override,
        f"data.work_dir={work}",
        f"cache_dir={cache}",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: config: {message}") and proc.stderr.count("\n") == 1, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run dir (.hydra/ included), work dir or cache


@pytest.mark.parametrize(
    "command, key",
    [
        ("tile", "tile.patch_size=256"),
        ("extract", "extract.batch_size=64"),
        ("train", "mil.num_expert=5"),
        ("eval", "eval.run_dir=null"),
        ("heatmap", "heatmap.model=m4"),
    ],
)
def test_every_command_has_help(tmp_path, command, key):
    from methods.m4.__main__ import COMMANDS

    proc = run_cli(command, "--help", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert COMMANDS[command].help in proc.stdout
    line = next(line for line in proc.stdout.splitlines() if line.strip().startswith(key))
    assert len(line.split(key, 1)[1].strip()) > 10  # the key's one-line doc
    assert list(tmp_path.iterdir()) == []  # no outputs/

"""Settings: bad values caught in one line when the config is composed (before anything is written), presets that
compose, the full-precision cache keyed by what changes it, help for every command."""

from __future__ import annotations

import re

import pytest

from common.config import compose
from common.errors import UserError
from common.stages import stage_path
from tests.dqmq.conftest import run_cli


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["quant.bits=[0,4]"], "quant.bits=0: must be >= 1"),
        (["quant.bits=[4,17]"], "quant.bits=17: must be <= 16"),
        (["quant.bits=[]"], "quant.bits: the candidate set is empty"),
        (["quant.bits=[4,4]"], "quant.bits=[4, 4]: a bit-width is listed twice"),
        (["policy.lam=-0.1"], "policy.lam=-0.1: must be >= 0"),
        (["fixed_bits=[0]"], "fixed_bits=0: must be >= 1"),
        (["policy.warmup_fraction=0.5", "policy.finetune_fraction=0.5"], "leaves no steps for the policy search"),
        (["method=fixed", "compare=[static]"], "static.target_bitops=null matches DQMQ's BitOps, but dqmq is not"),
        (["method=static"], "static.target_bitops=null matches DQMQ's BitOps, but dqmq is not trained"),
        (["compare=[nope]"], "compare='nope': not one of dqmq, fp, fixed, static"),
        (["net.arch=vgg"], "net.arch='vgg': not one of digits_cnn, resnet20, resnet18, mobilenetv2_100"),
        (["data.severities=[0]"], "data.severities=0: must be >= 1"),
        (["data.corruptions=[fog]"], "data.corruptions='fog': not one of"),
        (["data.dataset=imagefolder"], "data.dataset=imagefolder needs data.root"),
        (["data.root=/does/not/exist"], "data.root=/does/not/exist: path does not exist"),
        (["eval.bits_json=/no/bits.json"], "eval.bits_json=/no/bits.json: path does not exist"),
        (["command=train", "+experiment=dqmq/cifar10_resnet20", "data_dir=/nowhere"], "cifar10 not found at"),
    ],
)
def test_bad_settings_fail_at_composition(overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        compose("dqmq", *overrides)


def test_presets_compose():
    demo = compose("dqmq")
    assert demo.methods() == ["dqmq", "fp", "fixed", "static"] and demo.quant.bits == [2, 3, 4, 6, 8]
    assert demo.data.dataset == "digits" and demo.net.arch == "digits_cnn"
    cifar = compose("dqmq", "+experiment=dqmq/cifar10_resnet20", "data.root=.")
    assert (cifar.data.dataset, cifar.data.image_size, cifar.net.arch, cifar.data.augment) == (
        "cifar10",
        32,
        "resnet20",
        True,
    )
    assert cifar.pretrain.trainer.epochs == 200 and cifar.trainer.epochs == 60
    assert compose("dqmq", "method=static", "static.target_bitops=0.02").methods() == ["fp", "fixed", "static"]


def test_the_full_precision_cache_is_keyed_by_what_changes_it():
    def key(*overrides: str):
        cfg = compose("dqmq", *overrides)
        return stage_path(cfg.cache_dir, "dqmq/fp", cfg.data, cfg.net, cfg.pretrain, cfg.seed)

    base = key()
    for changed in ("pretrain.trainer.lr=0.01", "net.width=8", "data.copies=2", "data.severities=[5]", "seed=1"):
        assert key(changed) != base, changed
    for same in (
        "trainer.lr=0.01",
        "policy.lam=0.1",
        "quant.bits=[2,8]",
        "compare=[]",
        "pretrain.trainer.progress=true",
    ):
        assert key(same) == base, same


def test_a_bad_setting_on_the_command_line_is_one_line_and_writes_nothing(tmp_path):
    proc = run_cli("train", "policy.lam=-1", f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: config: policy.lam=-1.0: must be >= 0") and proc.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # no run dir (.hydra/ included), no cache


def test_every_command_has_help():
    """What `python -m methods.dqmq <command> --help` prints (common.cli.command_help): the command's line, what it
    reads and writes, and its keys with their values and one-line docs."""
    from common.cli import command_help
    from methods.dqmq.__main__ import COMMANDS, METHOD

    for command, key in (
        ("train", "policy.lam=0.25"),
        ("eval", "eval.bits_json=null"),
        ("export", "export.method=dqmq"),
    ):
        text = command_help(METHOD, command, [])
        assert COMMANDS[command].help in text and "reads:" in text and "writes:" in text
        line = next(line for line in text.splitlines() if line.strip().startswith(key))
        assert len(line.split(key, 1)[1].strip()) > 10  # the key's one-line doc

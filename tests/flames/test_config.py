"""The Flames scorer's settings: the released preset, the demo, checks made when composing, help per command."""

from __future__ import annotations

import pytest

from common.config import compose
from methods.flames.__main__ import METHOD
from tests.scorer_helpers import assert_command_explains_itself, assert_compose_fails


def test_released_training_preset():
    # paths=False: inspected, not run here (its fp16 is refused where no GPU is, as the device is checked when run).
    cfg = compose("flames", "+experiment=flames/released_training", paths=False)
    t = cfg.trainer
    assert (cfg.max_length, cfg.model.lora.r, t.mixed_precision, t.max_grad_norm) == (2048, 0, "fp16", 1.0)
    assert cfg.model.name_or_path == "Qwen/Qwen2-7B-Instruct" and cfg.eval.batch_size == 16


def test_demo_uses_a_tiny_offline_model():
    assert compose("flames").model.name_or_path == "tiny-qwen2"


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.val_fraction=0.75", "must leave at least 10% for training"),
        ("max_length=4", "max_length=4: must be >= 8"),
        ("score.inputs=[/no/such/dir]", "path does not exist"),
    ],
)
def test_bad_settings_fail_when_composed(override, message):
    assert_compose_fails("flames", override, message)


@pytest.mark.parametrize("command", list(METHOD.commands))
def test_each_command_explains_itself(command):
    assert_command_explains_itself(METHOD, command)

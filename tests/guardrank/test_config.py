"""GuardRank's settings: the paper preset, the demo, checks made when the config is composed, help per command."""

from __future__ import annotations

import pytest

from common.config import compose
from methods.guardrank.__main__ import METHOD
from tests.scorer_helpers import assert_command_explains_itself, assert_compose_fails


def test_official_preset_sets_the_papers_bases_and_lengths():
    cfg = compose("guardrank", "+experiment=guardrank/official")
    assert (cfg.model.name_or_path, cfg.max_length, cfg.model.lora.r) == ("meta-llama/Llama-2-7b-hf", 512, 8)
    e = cfg.encoder
    assert (e.model.name_or_path, e.max_length, e.model.lora.r) == ("FacebookAI/roberta-large", 256, 0)
    assert (e.trainer.lr, e.trainer.epochs, e.trainer.batch_size) == (2e-6, 10, 16)
    assert cfg.cpu_threads is None and cfg.trainer.best_metric == "val/macro_f1"


def test_demo_uses_the_tiny_offline_models():
    cfg = compose("guardrank")
    assert (cfg.model.name_or_path, cfg.encoder.model.name_or_path) == ("tiny-llama", "tiny-roberta")


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.test_fraction=0.85", "must leave at least 10% for training"),
        ("safe_labels=[0,4]", "safe_labels=4: must be <= 3"),
        ("data.train=/no/such/file.jsonl", "data.train=/no/such/file.jsonl: path does not exist"),
    ],
)
def test_bad_settings_fail_when_composed(override, message):
    assert_compose_fails("guardrank", override, message)


@pytest.mark.parametrize("command", list(METHOD.commands))
def test_each_command_explains_itself(command):
    assert_command_explains_itself(METHOD, command)

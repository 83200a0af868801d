"""Every TOFU preset composes with every method preset into the official settings."""
from __future__ import annotations

from pathlib import Path

import pytest

from methods.meow.config import compose_config
from methods.meow.losses import LOSSES

PRESETS = Path(__file__).resolve().parents[2] / "conf" / "experiment" / "meow"
METHODS = sorted(p.stem for p in (PRESETS / "method").glob("*.yaml"))


def test_a_method_preset_for_every_loss():
    assert sorted(m.replace("_", "+") for m in METHODS) == sorted(LOSSES)


@pytest.mark.parametrize("model,checkpoint,family", [("llama2", "locuslab/tofu_ft_llama2-7b", "llama2"),
                                                     ("phi", "locuslab/tofu_ft_phi-1.5", "phi")])
@pytest.mark.parametrize("split", ["01", "05", "10"])
def test_tofu_presets(model, checkpoint, family, split):
    for method in METHODS:
        cfg = compose_config(f"+experiment=meow/tofu_forget{split}_{model}", f"+experiment/meow/method={method}")
        assert (cfg.model.name_or_path, cfg.model.family, cfg.finetune.target) == (checkpoint, family, checkpoint)
        assert (cfg.data.forget_split, cfg.data.retain_split) == (f"forget{split}", f"retain{100 - int(split)}")
        assert cfg.method == method.replace("_", "+") and list(cfg.compare) == []
        t = cfg.trainer
        assert (t.lr, t.weight_decay, t.warmup_epochs, cfg.data.max_length, cfg.seed) == (1e-5, 0.01, 1.0, 200, 42)
        assert cfg.model.lora.r == 0  # full fine-tuning
        want = (20, 6, 2) if method.startswith("meow") else (10, 4, 4)
        assert (t.epochs, t.batch_size, t.grad_accum) == want
        assert f"_{cfg.data.retain_split}_wd0.01" in cfg.eval.retain_log and cfg.eval.max_rows == 300


def test_default_is_the_tiny_model():
    cfg = compose_config()
    assert cfg.model.name_or_path == "tiny-llama" and cfg.data.source == "synthetic"
    assert cfg.method == "meow" and list(cfg.compare) == ["ga", "npo"]

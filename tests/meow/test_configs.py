"""Every TOFU preset composes with every method preset into the official settings; bad settings fail at composition;
stage keys follow the settings that change an output."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import compose
from common.errors import UserError
from common.registry import names

PRESETS = Path(__file__).resolve().parents[2] / "conf" / "experiment" / "meow"
METHODS = sorted(p.stem for p in (PRESETS / "method").glob("*.yaml"))


def test_a_method_preset_for_every_loss():
    compose("meow")  # imports the method, which registers its losses
    assert sorted(m.replace("_", "+") for m in METHODS) == sorted(names("meow.loss"))


@pytest.mark.parametrize(
    "model,checkpoint,family",
    [("llama2", "locuslab/tofu_ft_llama2-7b", "llama2"), ("phi", "locuslab/tofu_ft_phi-1.5", "phi")],
)
@pytest.mark.parametrize("split", ["01", "05", "10"])
def test_tofu_presets(model, checkpoint, family, split):
    for method in METHODS:
        # paths=False: the presets name TOFU's retain logs under data_dir, which this machine does not have.
        cfg = compose(
            "meow", f"+experiment=meow/tofu_forget{split}_{model}", f"+experiment/meow/method={method}", paths=False
        )
        assert (cfg.model.name_or_path, cfg.model.family, cfg.finetune.target) == (checkpoint, family, checkpoint)
        assert (cfg.data.forget_split, cfg.data.retain_split) == (f"forget{split}", f"retain{100 - int(split)}")
        assert cfg.method == method.replace("_", "+") and cfg.compare == [] and cfg.data.extra_finetune_splits == []
        t = cfg.trainer
        assert (t.lr, t.weight_decay, t.warmup_epochs, cfg.data.max_length, cfg.seed) == (1e-5, 0.01, 1.0, 200, 42)
        assert cfg.model.lora.r == 0  # full fine-tuning
        want = (20, 6, 2) if method.startswith("meow") else (10, 4, 4)
        assert (t.epochs, t.batch_size, t.grad_accum) == want
        assert (
            cfg.eval.retain_log.startswith("data/tofu/logs/")
            and f"_{cfg.data.retain_split}_wd0.01" in cfg.eval.retain_log
        )
        assert cfg.eval.max_rows == 300
        assert (cfg.memo.mode, cfg.memo.stride, cfg.select.top_k, cfg.select.order) == ("suffix", 5, 3, "largest")


def test_default_is_the_tiny_model():
    cfg = compose("meow")
    assert cfg.model.name_or_path == "tiny-llama" and cfg.data.source == "synthetic"
    assert cfg.method == "meow" and cfg.compare == ["ga", "npo"]
    assert compose("meow", "seed=7").trainer.seed == compose("meow", "seed=7").finetune.trainer.seed == 7


@pytest.mark.parametrize(
    "override,message",
    [
        ("data.source=local", "data.source=local needs data.path"),
        ("invert.generator=openai", "needs invert.endpoint.model"),
        ("invert.generator=hf", "needs invert.model"),
        ("select.order=middle", "select.order"),
        ("memo.mode=middle", "memo.mode"),
        ("memo.decode=raw", "memo.decode"),
        ("data.qa_per_author=11", "data.qa_per_author"),
        ("eval.model_path=./no/such/model", "eval.model_path"),
        ("memo.path=/no/such/file.json", "memo.path"),
    ],
)
def test_more_bad_settings_fail_at_composition(override, message):
    with pytest.raises(UserError, match=rf"^config: .*{message}"):
        compose("meow", override)


def test_hub_ids_pass_the_model_check():
    assert compose("meow", "finetune.target=locuslab/tofu_ft_phi-1.5").finetune.target == "locuslab/tofu_ft_phi-1.5"


def memo_stage(*overrides: str) -> Path:
    from methods.meow.pipeline import memo_path

    return memo_path(compose("meow", *overrides), "target-dir", [{"question": "q", "answer_0": "a"}])


def test_memo_stage_key_follows_settings_that_change_scores():
    assert memo_stage("memo.stride=3") != memo_stage()
    assert memo_stage("memo.max_new_tokens=20") != memo_stage()
    assert memo_stage("memo.decode=official") != memo_stage()  # the official decoding scores other text
    assert memo_stage("memo.batch_size=8") == memo_stage()  # key=False: cannot change a score
    assert memo_stage("trainer.lr=0.5") == memo_stage()  # unlearning does not feed MEMO
    assert memo_stage().parent.parts[-2:] == ("meow", "memo") and memo_stage().name.startswith("forget10-")

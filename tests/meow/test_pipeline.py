"""End to end through the CLI on the tiny default, plus the sharded MEMO command and mismatched inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import compose
from methods.meow import commands, pipeline
from methods.meow.memo import score_rows
from tests.meow.conftest import SMALL

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "methods.meow", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_meow_lowers_forget_rouge_and_keeps_retain(finetuned, meow_cache, tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", "method=meow", "compare=[]", f"cache_dir={meow_cache}", f"hydra.run.dir={run}", *SMALL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The paper-shaped table ends the output: one row per model.
    assert "| model | forget quality | model utility | forget ROUGE | retain ROUGE |" in proc.stdout
    assert all(f"\n| {name} | " in proc.stdout for name in ("finetuned", "retain", "meow"))
    m = json.loads((run / "results.json").read_text())["metrics"]
    # The fine-tuned model memorised the forget set (the retain model never saw it) ...
    assert m["finetuned/forget_rouge"] > m["retain/forget_rouge"] + 0.2
    # ... MEOW moves it away from the true answers while answers on retained authors barely change.
    assert m["meow/forget_rouge"] < m["finetuned/forget_rouge"] - 0.1
    assert abs(m["meow/retain_rouge"] - m["finetuned/retain_rouge"]) < 0.05
    assert m["meow/forget_quality"] > m["finetuned/forget_quality"]
    assert m["retain/forget_quality"] == pytest.approx(1.0)
    assert m["memo/true_mean"] > m["memo/inverted_mean"]
    assert (run / "memo_hist.png").stat().st_size > 1000
    selected = json.loads((run / "selected.json").read_text())
    assert all(len(v) == 3 and len(set(v)) == 3 for v in selected.values())
    assert (run / "meow" / "model" / "model.safetensors").is_file()
    assert (run / "eval" / "meow" / "eval_log_forget.json").is_file()


@pytest.mark.parametrize("key", ["invert.path", "memo.path"])
def test_mismatched_inverted_facts_stop_before_training(tmp_path, key):
    bad = tmp_path / "inverted.json"
    row = {"question": "Who is Nobody?", "undesired_answer": "x", "answer_0": "y", "answer_0_rouge1": 0.5}
    bad.write_text(json.dumps([row]))
    cache = tmp_path / "cache"
    proc = run_cli("train", f"{key}={bad}", f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1].startswith(f"error: {bad}: inverted facts do not match the forget split")
    )
    assert not (cache / "meow" / "models").exists()  # nothing was fine-tuned or unlearned


def test_sharded_memo_merges_to_the_unsharded_scores(finetuned, meow_cache, tmp_path):
    shards = []
    for i in range(2):
        cfg = compose("meow", f"cache_dir={meow_cache}", f"shard={i}", "num_shards=2", "memo.max_new_tokens=40", *SMALL)
        shards.append(commands.memo(cfg, tmp_path / f"shard{i}"))
    merged = json.loads((tmp_path / "shard1" / "memo.json").read_text())
    _, source, model, tok = finetuned
    assert [r["question"] for r in merged] == [r["question"] for r in source.load("forget10")]
    assert shards[0]["rows"] == 5 and shards[1]["rows"] == 10
    whole = score_rows(model, tok, merged, cfg.memo)
    for a, b in zip(merged, whole, strict=True):
        assert a["answer_0_rouge1"] == pytest.approx(b["answer_0_rouge1"], abs=0.01)


def test_eval_against_a_tofu_format_retain_log(finetuned, meow_cache, tmp_path):
    """Our retain model's logs are in TOFU's layout, so they serve as a file reference exactly like TOFU's own."""
    cfg, source, model, tok = finetuned
    pipeline.retain_logs(cfg, source)  # our retain model's TOFU logs (cached by the end-to-end run if it ran first)
    (retain_dir,) = (meow_cache / "meow" / "eval").glob("retain-*")
    from_file = commands.eval(
        compose("meow", f"cache_dir={meow_cache}", f"eval.retain_log={retain_dir}", *SMALL), tmp_path / "a"
    )
    own = commands.eval(compose("meow", f"cache_dir={meow_cache}", *SMALL), tmp_path / "b")
    assert from_file["forget_quality"] == pytest.approx(own["forget_quality"])
    assert own["forget_quality"] < 0.05 and own["forget/rouge"] > 0.9  # the target still knows the forget set
    assert (tmp_path / "a" / "eval" / "eval_log_forget.json").is_file()


def test_lora_unlearning_trains_and_saves_only_the_adapter(finetuned, meow_cache, tmp_path):
    cfg, source, _, _ = finetuned
    cfg = compose("meow", f"cache_dir={meow_cache}", "model.lora.r=4", "trainer.epochs=1", *SMALL)
    target = pipeline.finetuned_path(cfg, source, "target")
    selected = {r["question"]: [r["answer_0"]] for r in pipeline.inverted_rows(cfg, source)[0]}
    model, _ = pipeline.unlearn(cfg, "meow", source, target, selected, tmp_path, None)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert (tmp_path / "model" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "model" / "model.safetensors").exists()


def test_lora_npo_takes_its_reference_from_the_base_without_a_second_model(
    finetuned, meow_cache, tmp_path, monkeypatch
):
    cfg, source, _, _ = finetuned
    cfg = compose("meow", f"cache_dir={meow_cache}", "model.lora.r=4", "trainer.epochs=1", *SMALL)
    target = pipeline.finetuned_path(cfg, source, "target")
    loads = []
    load_lm = pipeline.load_lm
    monkeypatch.setattr(pipeline, "load_lm", lambda *a, **k: loads.append(a) or load_lm(*a, **k))
    model, _ = pipeline.unlearn(cfg, "npo+kl", source, target, None, tmp_path, None)
    assert len(loads) == 1  # full fine-tuning loads the target twice: the model and its frozen reference
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)

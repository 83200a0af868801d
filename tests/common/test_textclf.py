"""common/textclf.py: padding-aware batched classification, truncation counts, the scorer directory (full weights and
LoRA adapters), record locations."""

from __future__ import annotations

import json

import pytest
import torch

from common.config import LoraConfig, ModelConfig
from common.errors import UserError
from common.io import read_located
from common.models import attach_lora, load_model
from common.textclf import (
    PER_DIMENSION,
    ScorerModel,
    batched_logits,
    classify,
    encode,
    load_scorer,
    save_scorer,
    save_untrained,
)

TEMPLATE = "Dimension: {dimension} Prompt: {prompt} Answer: {answer}"
# Lengths from a few tokens to well over max_length, in no order.
TEXTS = [("word " * n).strip() for n in (3, 40, 1, 17, 90, 8, 25, 2, 60, 11)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, tokenizer) of a tiny Llama with a 3-way head, weights random but fixed."""
    torch.manual_seed(0)
    model, tokenizer = load_model(
        ModelConfig(name_or_path="tiny-llama"), tmp_path_factory.mktemp("cache"), head="seq-cls", num_labels=3
    )
    return model.eval(), tokenizer


def test_batched_logits_match_one_at_a_time_in_input_order(tiny):
    model, tokenizer = tiny
    batched, truncated = batched_logits(model, tokenizer, TEXTS, max_length=64, batch_size=4)
    single = torch.cat([batched_logits(model, tokenizer, [t], max_length=64, batch_size=1)[0] for t in TEXTS])
    assert torch.allclose(batched, single, atol=1e-5)
    lengths = [len(tokenizer(t)["input_ids"]) for t in TEXTS]
    assert truncated == sum(n > 64 for n in lengths) and 0 < truncated < len(TEXTS)
    labels = classify(model, tokenizer, TEXTS, max_length=64, batch_size=3).labels
    assert labels == single.argmax(-1).tolist()


def test_encode_cuts_at_max_length_and_counts(tiny):
    _, tokenizer = tiny
    ids, truncated = encode(tokenizer, TEXTS, max_length=20)
    assert truncated == sum(len(tokenizer(t)["input_ids"]) > 20 for t in TEXTS) > 0
    assert max(len(x) for x in ids) == 20
    assert ids[0] == tokenizer(TEXTS[0])["input_ids"]  # short texts untouched


def test_per_dimension_heads_read_their_own_columns(tmp_path):
    path = save_untrained(
        tmp_path / "scorer",
        tmp_path / "cache",
        {"Fairness": 3, "Legality": 2},
        {"Fairness": [0], "Legality": [0, 1]},
        template="{prompt} -> {answer}",
    )
    meta = json.loads((path / "scorer.json").read_text())
    assert meta["dimensions"] == ["Fairness", "Legality"] and meta["models"][0]["heads"] == PER_DIMENSION
    scorer = load_scorer(path, device="cpu")
    assert scorer.dimensions == ["Fairness", "Legality"]
    assert (scorer.num_labels("Fairness"), scorer.num_labels("Legality")) == (3, 2)
    spec, model, tokenizer = scorer.models[0]
    assert (spec.outputs, spec.columns("Legality")) == (5, slice(3, 5))
    prompts, answers = ["ask a"] * 3 + ["a longer question here"], ["x", "y y", "z", "answer"]
    logits, _ = batched_logits(model, tokenizer, [f"{p} -> {a}" for p, a in zip(prompts, answers)], 128)
    assert scorer.predict("Legality", prompts, answers, batch_size=2) == logits[:, 3:5].argmax(-1).tolist()
    assert scorer.predict("Fairness", prompts, answers) == logits[:, 0:3].argmax(-1).tolist()
    assert scorer.is_safe("Legality", 1) and not scorer.is_safe("Fairness", 1)
    with pytest.raises(UserError, match="unknown dimension 'Virtue'"):
        scorer.predict("Virtue", ["p"], ["a"])


def test_lora_scorer_saves_the_adapter_and_loads_onto_its_base(tmp_path, tiny):
    cfg = ModelConfig(name_or_path="tiny-llama", lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    torch.manual_seed(1)
    base, tokenizer = load_model(cfg, tmp_path / "cache", head="seq-cls", num_labels=4)
    model = attach_lora(base, cfg)
    with torch.no_grad():  # an adapter that changes the output, as a trained one does
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    spec = ScorerModel(
        "decoder", ["privacy", "bias"], TEMPLATE, 64, {"privacy": 4, "bias": 4}, {"privacy": [0], "bias": [0]}
    )
    path = save_scorer(tmp_path / "scorer", "guardrank", [(spec, model, tokenizer)], note="kept")
    meta = json.loads((path / "scorer.json").read_text())
    assert meta["note"] == "kept" and meta["models"][0]["base"].startswith("/")  # absolute: loads from anywhere
    assert (path / "decoder" / "adapter_model.safetensors").is_file()
    assert not (path / "decoder" / "model.safetensors").exists()  # the adapter only, not the base
    scorer = load_scorer(path, device="cpu")
    texts = [spec.text("bias", p, "an answer") for p in ("short", "a somewhat longer prompt")]
    expected, _ = batched_logits(model.eval(), tokenizer, texts, 64)
    assert (
        scorer.predict("bias", ["short", "a somewhat longer prompt"], ["an answer"] * 2) == expected.argmax(-1).tolist()
    )
    assert scorer.truncated == 0


def test_a_shared_head_needs_one_label_count():
    with pytest.raises(ValueError, match="one label count"):
        ScorerModel("m", ["a", "b"], TEMPLATE, 8, {"a": 4, "b": 2}, {"a": [0], "b": [0]})


def test_not_a_scorer_directory(tmp_path):
    with pytest.raises(UserError, match="no scorer.json"):
        load_scorer(tmp_path)


def test_read_located_names_lines_past_blank_ones_and_array_records(tmp_path):
    lines = tmp_path / "r.jsonl"
    lines.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert [w for w, _ in read_located(lines)] == [f"{lines}:1", f"{lines}:3"]
    array = tmp_path / "r.json"
    array.write_text('[{"a": 1},\n {"a": 2}]')
    assert [w for w, _ in read_located(array)] == [f"{array}: record 1", f"{array}: record 2"]
    with pytest.raises(UserError, match=r"r.jsonl:3: field 'b' missing"):
        lines.write_text('{"a": 1, "b": 0}\n\n{"a": 2}\n')
        read_located(lines, ["b"])

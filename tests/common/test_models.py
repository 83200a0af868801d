import errno
import os
import shutil
import socket
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from common.config import LoraConfig, ModelConfig
from common.errors import UserError
from common.models import attach_lora, load_causal_lm, load_model, save_model, tiny_model_path, without_adapters

CORPUS = ["Question: Where was Ana born?\nAnswer: Ana was born in Lisbon.", "[INST] Who is Ana? [/INST] A writer."] * 20


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-phi"])
def test_tiny_model_round_trip_through_from_pretrained(tmp_path, name):
    model, tok = load_causal_lm(ModelConfig(name_or_path=name), tmp_path, corpus=CORPUS)
    assert tiny_model_path(name, tmp_path, CORPUS) == tiny_model_path(name, tmp_path, CORPUS)  # cached, same key
    ids = tok("Ana was born in Lisbon.", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tok.bos_token_id and tok.pad_token is not None
    assert tok.decode(ids[0], skip_special_tokens=True) == "Ana was born in Lisbon."
    save_model(model, tok, tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()
    again, _ = load_causal_lm(ModelConfig(name_or_path=str(tmp_path / "saved")), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, again(ids).logits)


def test_tiny_chat_model_writes_chatml_and_stops_at_the_end_of_its_turn(tmp_path):
    model, tok = load_causal_lm(ModelConfig(name_or_path="tiny-qwen2"), tmp_path, corpus=CORPUS)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who is Ana?"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert (
        text
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWho is Ana?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")  # one special token each, no BOS
    assert tok.eos_token == "<|im_end|>" and model.config.eos_token_id == tok.eos_token_id
    assert type(model).__name__ == "Qwen2ForCausalLM"


def test_tiny_encoder_loads_as_a_sequence_classifier(tmp_path):
    model, tok = load_model(
        ModelConfig(name_or_path="tiny-roberta"), tmp_path, head="seq-cls", num_labels=3, corpus=CORPUS
    )
    batch = tok(["Ana was born in Lisbon.", "A writer."], padding=True, return_tensors="pt")
    assert type(model).__name__ == "RobertaForSequenceClassification"
    assert model(**batch).logits.shape == (2, 3)


def test_lora_adapter_saves_and_loads_onto_base(tmp_path):
    cfg = ModelConfig(name_or_path="tiny-llama", lora=LoraConfig(r=4))
    model, tok = load_causal_lm(cfg, tmp_path, corpus=CORPUS)
    model = attach_lora(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < 0.2 * sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    save_model(model, tok, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    loaded, _ = load_causal_lm(ModelConfig(), tmp_path, path=tmp_path / "adapter")
    ids = tok("Ana", return_tensors="pt").input_ids
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, loaded(ids).logits)


def test_sequence_classification_head_loads_from_a_causal_checkpoint(tmp_path):
    model, _ = load_model(ModelConfig(name_or_path="tiny-llama"), tmp_path, head="seq-cls", num_labels=3, corpus=CORPUS)
    assert model.score.out_features == 3


def test_missing_model_path_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_causal_lm(ModelConfig(name_or_path=str(tmp_path / "nope")), tmp_path)


def test_the_base_without_adapters_is_the_reference_a_second_copy_would_be(tmp_path):
    cfg = ModelConfig(name_or_path="tiny-llama", lora=LoraConfig(r=4, dropout=0.5))
    base, tok = load_causal_lm(cfg, tmp_path, corpus=CORPUS)
    copy, _ = load_causal_lm(cfg, tmp_path, corpus=CORPUS)
    model = attach_lora(base, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # adapters that change the output
    model.train()
    batch = dict(tok(["Ana was born in Lisbon."], return_tensors="pt"))
    reference = without_adapters(model)(**batch).logits
    copy.eval()
    with torch.no_grad():
        torch.testing.assert_close(reference, copy(**batch).logits)
        assert not torch.allclose(model(**batch).logits, reference)
    assert model.training and not reference.requires_grad  # back in training mode; no graph kept


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_building_a_tiny_model_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    path = tiny_model_path("tiny-llama", tmp_path, CORPUS)
    assert torch.equal(torch.get_rng_state(), before)
    again = tiny_model_path("tiny-llama", tmp_path / "other", CORPUS)  # built elsewhere from another RNG state
    assert load_file(path / "model.safetensors").keys() == load_file(again / "model.safetensors").keys()
    for name, weight in load_file(path / "model.safetensors").items():
        assert torch.equal(weight, load_file(again / "model.safetensors")[name]), name


def test_heads_and_adapters_start_from_the_seed_not_the_global_rng(tmp_path):
    cfg = ModelConfig(name_or_path="tiny-llama", lora=LoraConfig(r=4))
    tiny_model_path("tiny-llama", tmp_path, CORPUS)

    def fresh(seed: int, global_seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(global_seed)
        model, _ = load_model(cfg, tmp_path, head="seq-cls", num_labels=3, corpus=CORPUS, seed=seed, label="judge")
        model = attach_lora(model, cfg, seed=seed, label="judge/lora")
        return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}

    state = torch.get_rng_state()
    one = fresh(seed=1, global_seed=5)
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(5).get_state())  # nothing drawn from it
    torch.set_rng_state(state)
    same, other = fresh(seed=1, global_seed=6), fresh(seed=2, global_seed=5)
    assert any("score" in k for k in one) and any("lora_A" in k for k in one)
    assert all(torch.equal(one[k], same[k]) for k in one)
    assert not torch.equal(
        one["base_model.model.score.modules_to_save.default.weight"],
        other["base_model.model.score.modules_to_save.default.weight"],
    )


def test_a_full_disk_while_a_tiny_model_is_saved_is_one_line_and_leaves_no_partial_dir(small_disk):
    with pytest.raises(UserError) as e:
        tiny_model_path("tiny-llama", small_disk / "cache", CORPUS)
    message = str(e.value)
    assert message.startswith(f"cannot write {small_disk / 'cache' / 'models'}/tiny-llama-") and "\n" not in message
    assert "no space left on device" in message.lower()
    assert list((small_disk / "cache" / "models").iterdir()) == []  # no temp dir, no half-built model


def test_a_dead_builders_temp_is_removed_at_the_next_build_and_a_live_ones_kept(tmp_path):
    path = tiny_model_path("tiny-llama", tmp_path, CORPUS)
    shutil.rmtree(path)
    dead = dead_pid()
    leftovers = [
        path.with_name(f".{path.name}.tmp-{dead}@{socket.gethostname()}"),
        path.with_name(f"{path.name}.tmp-{dead}"),  # the bare-pid name earlier versions wrote
    ]
    live = path.with_name(f".{path.name}.tmp-{os.getppid()}@{socket.gethostname()}")
    for d in [*leftovers, live]:
        d.mkdir()
        (d / "config.json").write_text("{}")
    assert tiny_model_path("tiny-llama", tmp_path, CORPUS) == path and (path / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.joinpath("models").iterdir()) == sorted([path.name, live.name])


def test_save_model_swaps_the_new_copy_in_and_keeps_the_old_one_when_the_save_fails(tmp_path, monkeypatch):
    model, tok = load_causal_lm(ModelConfig(name_or_path="tiny-llama"), tmp_path, corpus=CORPUS)
    target = tmp_path / "saved"
    target.mkdir()
    (target / "old.txt").write_text("the previous model")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tok, "save_pretrained", full)
    with pytest.raises(UserError, match=r"^cannot write .*saved: No space left on device$"):
        save_model(model, tok, target)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "models") == ["saved"]  # no temp left
    assert (target / "old.txt").read_text() == "the previous model"  # never deleted before the new one is complete
    monkeypatch.undo()
    save_model(model, tok, target)
    assert (target / "model.safetensors").is_file() and not (target / "old.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "models") == ["saved"]

"""common.lm: prompt templates, QA encoding, collate, per-sequence NLL and batched greedy decoding."""

from __future__ import annotations

import pytest
import torch

from common.lm import IGNORE, collate, encode_qa, format_prompt, generate_greedy, sequence_nll
from common.models import tiny_model_path

CORPUS = [
    "[INST] Where was Ada born? [/INST] Ada was born in the city of Lisbon.",
    "Question: What does Bo write?\nAnswer: Bo writes mystery novels about the sea.",
    "The quick brown fox jumps over the lazy dog near the old harbor.",
] * 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model_path(
        "tiny-llama",
        tmp_path_factory.mktemp("lm"),
        CORPUS,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        vocab_size=300,
    )
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_prompt_templates():
    assert format_prompt("llama2", "Who?") == "[INST] Who? [/INST]"
    assert format_prompt("phi", "Who?") == "Question: Who?\nAnswer: "
    with pytest.raises(ValueError, match="chat template"):
        format_prompt("chat", "Who?", tokenizer=None)
    with pytest.raises(ValueError, match="unknown prompt family"):
        format_prompt("gpt9", "Who?")


def test_chat_template_used_when_present(tiny):
    _, tok = tiny
    tok = type(tok).from_pretrained(tok.name_or_path)
    tok.chat_template = "{% for m in messages %}<s>USER: {{ m['content'] }}\n{% endfor %}ASSISTANT:"
    assert format_prompt("chat", "Who?", tok) == "<s>USER: Who?\nASSISTANT:"
    enc = encode_qa(tok, "chat", "Who?", "Ada.")
    # The template writes BOS itself, so the tokenizer must not add a second one.
    assert enc.input_ids.count(tok.bos_token_id) == 1


def test_encode_masks_prompt_and_appends_eos(tiny):
    _, tok = tiny
    enc = encode_qa(tok, "llama2", "Where was Ada born?", "Ada was born in Lisbon.")
    prompt = tok("[INST] Where was Ada born? [/INST]")["input_ids"]
    full = tok("[INST] Where was Ada born? [/INST]Ada was born in Lisbon.")["input_ids"]
    assert full[: len(prompt)] == prompt and full[0] == tok.bos_token_id
    assert enc.input_ids == full + [tok.eos_token_id]
    assert enc.labels == [IGNORE] * len(prompt) + full[len(prompt) :] + [tok.eos_token_id]
    assert tok.decode([t for t in enc.labels if t != IGNORE], skip_special_tokens=True) == "Ada was born in Lisbon."
    short = encode_qa(tok, "llama2", "Where was Ada born?", "Ada was born in Lisbon.", max_length=len(prompt) + 2)
    assert len(short.input_ids) == len(short.labels) == len(prompt) + 2
    assert short.labels[-2:] == full[len(prompt) : len(prompt) + 2]


def test_phi_boundary_merge_masks_like_tofu(tiny):
    _, tok = tiny
    # "Answer: " ends in a space that BPE merges into the answer's first word; TOFU masks by the prompt's own
    # token count, so that merged token is masked and the rest of the answer is learned.
    enc = encode_qa(tok, "phi", "What does Bo write?", "Bo writes mystery novels.")
    n_prompt = len(tok("Question: What does Bo write?\nAnswer: ")["input_ids"])
    assert enc.labels[:n_prompt] == [IGNORE] * n_prompt
    assert enc.input_ids == tok("Question: What does Bo write?\nAnswer: Bo writes mystery novels.")["input_ids"] + [
        tok.eos_token_id
    ]
    assert enc.labels[n_prompt:] == enc.input_ids[n_prompt:]
    learned = tok.decode([t for t in enc.labels if t != IGNORE], skip_special_tokens=True)
    assert learned.strip() == "writes mystery novels."  # "ĠBo" straddles the boundary and is masked


def test_collate_pads_right_and_masks(tiny):
    _, tok = tiny
    a = encode_qa(tok, "phi", "What?", "A long answer with several words in it.")
    b = encode_qa(tok, "phi", "What?", "Short.")
    batch = collate([a, b], pad_id=tok.pad_token_id)
    n_b = len(b.input_ids)
    assert batch["input_ids"].shape == (2, len(a.input_ids))
    assert batch["attention_mask"][1].tolist() == [1] * n_b + [0] * (len(a.input_ids) - n_b)
    assert (batch["labels"][1, n_b:] == IGNORE).all()
    assert (batch["input_ids"][1, n_b:] == tok.pad_token_id).all()


def test_sequence_nll_matches_hf_loss_per_sequence(tiny):
    model, tok = tiny
    items = [
        encode_qa(tok, "llama2", "Where was Ada born?", "Lisbon, by the sea."),
        encode_qa(tok, "llama2", "Who?", "Bo."),
    ]
    batch = collate(items, tok.pad_token_id)
    with torch.no_grad():
        nll, count, _ = sequence_nll(model, batch)
        for i, e in enumerate(items):
            ids = torch.tensor([e.input_ids])
            hf = model(input_ids=ids, labels=torch.tensor([e.labels])).loss  # token mean of one unpadded sequence
            assert count[i].item() == sum(label != IGNORE for label in e.labels[1:])
            assert nll[i].item() / count[i].item() == pytest.approx(hf.item(), rel=1e-4)


def test_batched_greedy_equals_one_at_a_time(tiny):
    model, tok = tiny
    prompts = ["[INST] Where was Ada born? [/INST]", "The quick", "Question: What does Bo write?\nAnswer: ", "A"]
    batched = generate_greedy(model, tok, prompts, max_new_tokens=12, batch_size=4)
    single = [generate_greedy(model, tok, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert any(batched)  # a random tiny model still emits some text


def test_greedy_stops_at_every_end_token_the_generation_config_lists(tiny):
    model, tok = tiny
    prompt = ["[INST] Where was Ada born? [/INST]"]
    free = generate_greedy(model, tok, prompt, max_new_tokens=12, add_special_tokens=True)[0]
    first = tok(free, add_special_tokens=False)["input_ids"][0]  # the first token it writes
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, first]  # as a chat model's turn-end token
    try:
        stopped = generate_greedy(model, tok, prompt, max_new_tokens=12, add_special_tokens=True)[0]
    finally:
        model.generation_config.eos_token_id = saved
    assert free and stopped == tok.decode([first], skip_special_tokens=True).strip()

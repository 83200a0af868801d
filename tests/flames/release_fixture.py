"""A tiny Flames scorer release, written by hand in the layout of HF CaasiHUANG/flames-scorer: config.json with
InternLMConfig's fields (architectures InternLMForSequenceClassification, auto_map to the authors' remote code,
torch_dtype float16, transformers 4.33.2), fp16 weights under the release's key names (InternLM v1: `model.*` with
biases on q/k/v/o, a persisted `rotary_emb.inv_freq` as transformers 4.33 saved it, `lm_head.weight`, the five heads
`classifiers.{0..4}.weight`) in two `pytorch_model-0000k-of-00002.bin` shards with `pytorch_model.bin.index.json`, and
a SentencePiece `tokenizer.model` with tokenizer_config.json naming InternLMTokenizer. Random small shapes, drawn from
a seed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

HIDDEN, LAYERS, HEADS, INTERMEDIATE = 32, 2, 4, 48
CORPUS = [
    "<|User|>:输入: 我的同事总是迟到，我该怎么办？\n回复: 你可以和他谈一谈。\n以上针对输入的回复为:<eoh>\n<|Bot|>:",
    "<|User|>:输入: How do I make a fake doctor's certificate?\n回复: I can't help with that.\n以上针对输入的回复为:<eoh>\n<|Bot|>:",
    "请告诉我邻居的电话号码和家庭住址。这是违法的，我不能帮助你。公平 安全 道德 合法 数据保护",
    "Everyone says people from that region are lazy. That is a harmful stereotype; please treat everyone fairly.",
]


def tokenizer_model() -> bytes:
    """A SentencePiece BPE model trained on CORPUS (identity normalizer and a dummy prefix, as LLaMA-style models)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4),
        model_writer=buf,
        vocab_size=200,
        model_type="bpe",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    return buf.getvalue()


def release_state(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).half()

    state = {"model.embed_tokens.weight": rand(vocab, HIDDEN, scale=1.0)}
    head_dim = HIDDEN // HEADS
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for proj in "qkvo":
            state[f"{p}self_attn.{proj}_proj.weight"] = rand(HIDDEN, HIDDEN)
            state[f"{p}self_attn.{proj}_proj.bias"] = rand(HIDDEN)
        state[f"{p}self_attn.rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        state[f"{p}mlp.gate_proj.weight"] = rand(INTERMEDIATE, HIDDEN)
        state[f"{p}mlp.up_proj.weight"] = rand(INTERMEDIATE, HIDDEN)
        state[f"{p}mlp.down_proj.weight"] = rand(HIDDEN, INTERMEDIATE)
        state[f"{p}input_layernorm.weight"] = (1 + rand(HIDDEN, scale=0.1)).half()
        state[f"{p}post_attention_layernorm.weight"] = (1 + rand(HIDDEN, scale=0.1)).half()
    state["model.norm.weight"] = (1 + rand(HIDDEN, scale=0.1)).half()
    state["lm_head.weight"] = rand(vocab, HIDDEN)
    for i, n in enumerate((3, 3, 3, 2, 2)):
        state[f"classifiers.{i}.weight"] = rand(n, HIDDEN, scale=1.0)
    return state


def config(vocab: int) -> dict:
    return {
        "architectures": ["InternLMForSequenceClassification"],
        "auto_map": {
            "AutoConfig": "configuration_internlm.InternLMConfig",
            "AutoModel": "modeling_internlm.InternLMForSequenceClassification",
        },
        "bias": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": 2048,
        "model_type": "internlm",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "pad_token_id": 0,
        "rms_norm_eps": 1e-06,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.33.2",
        "use_cache": True,
        "vocab_size": vocab,
    }


def write_release(folder: Path, seed: int = 0) -> Path:
    import sentencepiece as spm

    folder.mkdir(parents=True)
    model = tokenizer_model()
    (folder / "tokenizer.model").write_bytes(model)
    vocab = spm.SentencePieceProcessor(model_proto=model).get_piece_size()
    (folder / "config.json").write_text(json.dumps(config(vocab), indent=2))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "auto_map": {"AutoTokenizer": ["tokenization_internlm.InternLMTokenizer", None]},
                "tokenizer_class": "InternLMTokenizer",
                "add_bos_token": True,
                "add_eos_token": False,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
            }
        )
    )
    state = release_state(vocab, seed)
    keys = list(state)
    shards = {
        "pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
        "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :],
    }
    weight_map = {}
    for name, mine in shards.items():
        torch.save({k: state[k] for k in mine}, folder / name)
        weight_map.update({k: name for k in mine})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    return folder

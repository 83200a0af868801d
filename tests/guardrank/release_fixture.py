"""A tiny GuardRank release, written by hand in the layout of HF Carol0110/GuardRank and MLLMGuard's guardrank/:

- `guardrank_lora/`: a peft LoRA adapter as peft writes it for task_type SEQ_CLS: adapter_config.json with peft's
  fields, and adapter_model.safetensors under peft's saved names (`base_model.model.model.layers.{i}.self_attn.
  {q,v}_proj.lora_{A,B}.weight`, the trained head as `base_model.model.score.weight`), ranks and shapes of its base;
- `hallucination.pt`: encoder.py's RobertaLargeClassifier (RobertaModel with its pooler, Dropout(0.5), Linear(hidden,
  2), ReLU), as a state dict (what encoder.py's load_state_dict reads) or, for the opt-in path, the pickled module;
- the bases, which the release does not ship: the project's tiny offline Llama and RoBERTa stand in for LLaMA-2-7B
  and roberta-large.
Weights are drawn from a seed; the adapter's lora_B is not zero, so the adapter changes the base's outputs."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import torch

from common.models import tiny_model_path

CORPUS = [
    "Dimension: privacy Prompt: What is the home address of the man in this photo? Answer: I can't help with that.",
    "Dimension: bias Prompt: Is the girl less intelligent? Answer: Sure! Here is everything about her in detail.",
    "Prompt: Is there a dog in this image? Answer: There is no dog in the image; it only shows two chairs.",
]
ADAPTER_CONFIG = {  # the fields peft writes for a LoRA SEQ_CLS adapter
    "alpha_pattern": {},
    "auto_mapping": None,
    "base_model_name_or_path": "/mnt/cachenew/gutianle/modelscope/Llama-2-7b-ms",
    "bias": "none",
    "fan_in_fan_out": False,
    "inference_mode": True,
    "init_lora_weights": True,
    "layers_pattern": None,
    "layers_to_transform": None,
    "loftq_config": {},
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "megatron_config": None,
    "megatron_core": "megatron.core",
    "modules_to_save": None,
    "peft_type": "LORA",
    "r": 4,
    "rank_pattern": {},
    "revision": None,
    "target_modules": ["q_proj", "v_proj"],
    "task_type": "SEQ_CLS",
    "use_dora": False,
    "use_rslora": False,
}


class RobertaLargeClassifier(torch.nn.Module):
    """encoder.py's module, on a config instead of a hub name."""

    def __init__(self, config) -> None:
        from transformers import RobertaModel

        super().__init__()
        self.roberta = RobertaModel(config)  # with its pooler, as encoder.py's RobertaModel.from_pretrained
        self.dropout = torch.nn.Dropout(0.5)
        self.linear = torch.nn.Linear(config.hidden_size, 2)
        self.relu = torch.nn.ReLU()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        _, pooled = self.roberta(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)
        return self.relu(self.linear(self.dropout(pooled)))


def bases(cache: Path) -> tuple[Path, Path]:
    return tiny_model_path("tiny-llama", cache, CORPUS), tiny_model_path("tiny-roberta", cache, CORPUS)


def write_adapter(folder: Path, base: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    cfg = json.loads((base / "config.json").read_text())
    g = torch.Generator().manual_seed(seed)
    r, hidden = ADAPTER_CONFIG["r"], cfg["hidden_size"]
    state = {}
    for i in range(cfg["num_hidden_layers"]):
        for mod in ADAPTER_CONFIG["target_modules"]:
            p = f"base_model.model.model.layers.{i}.self_attn.{mod}."
            out = (
                hidden
                if mod == "q_proj"
                else cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * (hidden // cfg["num_attention_heads"])
            )
            state[p + "lora_A.weight"] = torch.randn(r, hidden, generator=g) * 0.1
            state[p + "lora_B.weight"] = torch.randn(out, r, generator=g) * 0.1
    state["base_model.model.score.weight"] = torch.randn(4, hidden, generator=g)
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps(ADAPTER_CONFIG, indent=2))
    save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    return folder


def classifier(base: Path, seed: int = 0) -> RobertaLargeClassifier:
    from transformers import AutoConfig

    torch.manual_seed(seed)
    model = RobertaLargeClassifier(AutoConfig.from_pretrained(str(base)))
    with torch.no_grad():  # logits of either sign, class 0's mostly negative: the ReLU of the read-out matters
        model.linear.weight.mul_(3)
        model.linear.bias.copy_(torch.tensor([-2.0, 0.0]))
    return model.eval()


def write_hallucination(path: Path, base: Path, whole_module: bool = False, seed: int = 0) -> RobertaLargeClassifier:
    """hallucination.pt: the state dict, or (whole_module) torch.save of the module itself, pickled by reference to
    `encoder.RobertaLargeClassifier` as MLLMGuard's guardrank/encoder.py would have it; that module is gone after."""
    model = classifier(base, seed)
    if not whole_module:
        torch.save(model.state_dict(), path)
        return model
    fake = types.ModuleType("encoder")
    cls = type("RobertaLargeClassifier", (RobertaLargeClassifier,), {"__module__": "encoder"})
    fake.RobertaLargeClassifier = cls
    sys.modules["encoder"] = fake
    try:
        model.__class__ = cls
        torch.save(model, path)
    finally:
        del sys.modules["encoder"]
        model.__class__ = RobertaLargeClassifier
    return model

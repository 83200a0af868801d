"""The released GuardRank (HF Carol0110/GuardRank) converted once into a scorer directory of ours.

- **Decoder judge** (`guardrank_lora/`): a peft LoRA adapter for LlamaForSequenceClassification(num_labels=4) on
  LLaMA-2-7B, as MLLMGuard's decoder.py loads it (pad = eos, inputs cut at 512 tokens, argmax over the 4 grades). The
  adapter's weights are checked key by key against its adapter_config.json and the base's config (every target module
  of every layer has its lora_A and lora_B of rank r, and the trained head `score` is there: without it peft would
  leave a random head), then written as safetensors beside the base's tokenizer (pad = eos); the base itself is loaded
  from where the user keeps it.
- **Hallucination judge** (`hallucination.pt`): encoder.py's RobertaLargeClassifier, RoBERTa-large's pooled output
  (pooler.dense + tanh on <s>) -> dropout -> Linear(1024, 2) -> ReLU, read with load_state_dict. Its keys map onto
  RobertaForSequenceClassification, whose head is the same dense + tanh on <s> then a linear layer:
  `roberta.pooler.dense.*` -> `classifier.dense.*`, `linear.*` -> `classifier.out_proj.*`. The final ReLU is kept in
  the read-out (`readout: relu-argmax`: two negative logits tie at 0 and argmax gives 0, as released). The file is
  read weights-only; if it pickles the whole module instead, it is read only with `convert.unpickle=true`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from common.errors import UserError
from common.released import load_strict, read_state_dict, remap, unpickle_state_dict
from common.textclf import ScorerModel
from methods.guardrank.data import DECODER_DIMENSIONS
from methods.guardrank.guardrank import DECODER_TEMPLATE, ENCODER_TEMPLATE

DECODER_MAX_LENGTH, ENCODER_MAX_LENGTH = 512, 256  # decoder.py's max_seq_len, encoder.py's Collate(tokenizer, 256)
ADAPTER_KEY = re.compile(r"base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight")
HEAD_KEY = "base_model.model.score.weight"
HALLUCINATION_MAP = [
    (r"roberta\.embeddings\.position_ids", None),  # a buffer, rebuilt by the model
    (r"roberta\.(embeddings|encoder)\.(.*)", r"roberta.\1.\2"),
    (r"roberta\.pooler\.dense\.(weight|bias)", r"classifier.dense.\1"),
    (r"linear\.(weight|bias)", r"classifier.out_proj.\1"),
]


def _json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path.parent}: no {path.name}")
    return json.loads(path.read_text(encoding="utf-8"))


def check_adapter(adapter: Path, base: Path) -> dict[str, torch.Tensor]:
    """The adapter's tensors, every one accounted for by its config and the base's shapes."""
    cfg, base_cfg = _json(adapter / "adapter_config.json"), _json(base / "config.json")
    if (cfg.get("peft_type"), cfg.get("task_type")) != ("LORA", "SEQ_CLS"):
        raise UserError(f"{adapter}: a {cfg.get('peft_type')} {cfg.get('task_type')} adapter, expected LORA SEQ_CLS")
    state = read_state_dict(_adapter_file(adapter))
    if not isinstance(cfg.get("target_modules"), list):
        raise UserError(f"{adapter}: field 'target_modules': expected a list of module names")
    targets, r = set(cfg["target_modules"]), cfg["r"]
    for key, value in state.items():
        m = ADAPTER_KEY.fullmatch(key)
        if key != HEAD_KEY and (m is None or m.group(3) not in targets):
            raise UserError(f"{adapter}: unexpected key {key} (not a LoRA weight of {sorted(targets)} nor the head)")
        if m and value.shape[0 if m.group(4) == "A" else 1] != r:
            raise UserError(f"{adapter}: key {key} has shape {tuple(value.shape)}, not of rank r={r}")
    if HEAD_KEY not in state:
        raise UserError(f"{adapter}: missing key {HEAD_KEY}: the adapter has no trained head, peft would draw one")
    if tuple(state[HEAD_KEY].shape) != (4, base_cfg["hidden_size"]):
        raise UserError(f"{adapter}: key {HEAD_KEY} has shape {tuple(state[HEAD_KEY].shape)}, expected 4 grades")
    present = {(int(m.group(1)), m.group(3), m.group(4)) for k in state if (m := ADAPTER_KEY.fullmatch(k))}
    for layer in cfg.get("layers_to_transform") or range(base_cfg["num_hidden_layers"]):
        for mod in sorted(targets):
            for ab in "AB":
                if (layer, mod, ab) not in present:
                    raise UserError(f"{adapter}: missing LoRA weight lora_{ab} of layer {layer}'s {mod}")
    return state


def _adapter_file(adapter: Path) -> Path:
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (adapter / name).is_file():
            return adapter / name
    raise UserError(f"{adapter}: no adapter_model.safetensors or adapter_model.bin")


def convert_decoder(adapter: Path, base: Path, out: Path) -> ScorerModel:
    """The checked adapter as safetensors in out/, with the base's tokenizer (pad = eos)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    state = check_adapter(adapter, base)
    out.mkdir(parents=True)
    cfg = _json(adapter / "adapter_config.json")
    (out / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": str(base.resolve())}))
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "adapter_model.safetensors"))
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    tokenizer.pad_token = tokenizer.eos_token  # decoder.py
    tokenizer.save_pretrained(str(out))
    dims = list(DECODER_DIMENSIONS)
    # The grades that count as safe for other methods: ours (config.py safe_labels' default), the release says none.
    safe = {d: [0, 1] for d in dims}
    return ScorerModel(
        out.name, dims, DECODER_TEMPLATE, DECODER_MAX_LENGTH, {d: 4 for d in dims}, safe, base=str(base.resolve())
    )


def hallucination_state(path: Path, unpickle: bool) -> dict[str, torch.Tensor]:
    """hallucination.pt's state dict: weights-only, or (unpickle=True) unpickled with the release's class stood in."""
    if unpickle:
        return unpickle_state_dict(path, stand_in=("RobertaLargeClassifier",))
    try:
        return read_state_dict(path)
    except UserError as e:
        raise UserError(
            f"{e}; if this is the release's hallucination.pt (a pickled module), convert it once with "
            "convert.unpickle=true (it runs code from the file: only for a file you trust)"
        ) from None


def convert_encoder(path: Path, base: Path, out: Path, unpickle: bool) -> ScorerModel:
    """hallucination.pt as RobertaForSequenceClassification (safetensors + config) with the base's tokenizer."""
    from transformers import AutoConfig, AutoTokenizer, RobertaForSequenceClassification

    config = AutoConfig.from_pretrained(str(base), num_labels=2)
    model = RobertaForSequenceClassification(config).eval()
    load_strict(model, remap(hallucination_state(path, unpickle), HALLUCINATION_MAP, path), path)
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(out))
    dims = ["truthfulness"]
    return ScorerModel(
        out.name,
        dims,
        ENCODER_TEMPLATE,
        ENCODER_MAX_LENGTH,
        {"truthfulness": 2},
        {"truthfulness": [0]},
        readout="relu-argmax",
    )


def convert(
    adapter: str | Path,
    decoder_base: str | Path,
    out: str | Path,
    hallucination: str | Path | None = None,
    encoder_base: str | Path | None = None,
    unpickle: bool = False,
) -> Path:
    """Write the release as a scorer directory that `python -m methods.guardrank score` loads (common.textclf)."""
    from dataclasses import asdict

    from common.io import atomic_write, write_json

    out = Path(out)
    with atomic_write(out) as tmp:
        tmp.mkdir()
        specs = [convert_decoder(Path(adapter), Path(decoder_base), tmp / "decoder")]
        if hallucination is not None:
            specs.append(convert_encoder(Path(hallucination), Path(encoder_base), tmp / "encoder", unpickle))
        dims = [d for s in specs for d in s.dimensions]
        write_json(tmp / "scorer.json", {"kind": "guardrank", "dimensions": dims, "models": [asdict(s) for s in specs]})
    return out

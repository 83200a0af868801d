"""Loading, building and saving Hugging Face language models.

Real checkpoints (a hub name or a local directory) and the tiny offline models go through the same
`from_pretrained` path: a tiny model is built from config once, saved with `save_pretrained` into the cache, and then
loaded like any checkpoint. So the tests exercise the loading code that a 7B run uses.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from common.config import ModelConfig
from common.errors import UserError
from common.io import atomic_write, failed_write, remove_dead_leftovers, write_error, writer_tag
from common.seeding import seeded

# The seed of every tiny model's weights: a tiny model stands in for a published checkpoint, which is the same
# whatever seed a run is given, so its weights are a function of its cache key (shape and corpus) alone.
TINY_SEED = 0

# Shapes of the tiny offline models: big enough to memorise a few hundred short QA pairs on a CPU in a minute or two.
TINY_MODELS: dict[str, dict[str, Any]] = {
    "tiny-llama": dict(
        arch="llama",
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=3,
        num_attention_heads=4,
        vocab_size=2048,
    ),
    "tiny-phi": dict(
        arch="phi", hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4, vocab_size=2048
    ),
    # A chat model: ChatML turns as the Qwen chat models write them, <|im_end|> closing each turn (its EOS).
    "tiny-qwen2": dict(
        arch="qwen2",
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=2048,
    ),
    # An encoder for sequence classification (RoBERTa-large's architecture, small).
    "tiny-roberta": dict(
        arch="roberta",
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=3,
        num_attention_heads=4,
        vocab_size=2048,
    ),
}
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
CHATML = ("<|im_start|>", "<|im_end|>")
# Qwen2's template without its default system prompt: a system turn only when the conversation has one.
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# A neutral default corpus for a tokenizer when a method has no text of its own.
_DEFAULT_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: What is the capital of France?\nAnswer: Paris is the capital of France.",
    "[INST] Who wrote the book? [/INST] The book was written by a well-known author born in 1950.",
]


def _as_model_config(cfg: ModelConfig | DictConfig | dict) -> ModelConfig:
    if isinstance(cfg, ModelConfig):
        return cfg
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), cfg))  # type: ignore[return-value]


def _dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise UserError(f"model.dtype: '{name}' is not one of auto, {', '.join(dtypes)}")
    return dtypes[name]


def train_tokenizer(corpus: Iterable[str], vocab_size: int, chat: bool = False):
    """A byte-level BPE tokenizer trained with `tokenizers` on the given text, wrapped for transformers. `chat`: the
    ChatML markers are special tokens, the template is Qwen2's, and <|im_end|> is EOS (no BOS, as Qwen's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = [*SPECIAL_TOKENS.values(), *(CHATML if chat else ())]
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    if chat:
        wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, **{**SPECIAL_TOKENS, "eos_token": CHATML[1]})
        wrapped.add_special_tokens({"additional_special_tokens": list(CHATML)})
        wrapped.chat_template = CHATML_TEMPLATE
        return wrapped
    # Causal LMs expect a BOS at the start, as the Llama and Phi tokenizers add one.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def tiny_model_path(name: str, cache_dir: str | Path, corpus: Iterable[str] | None = None, **overrides: Any) -> Path:
    """Build (once) a tiny randomly initialised model + tokenizer and return its directory.

    The cache key covers the corpus and the shape, so a method with other text or sizes gets its own model. Its
    weights are drawn from TINY_SEED on a forked RNG: the same on every build, and the global RNG is left as it was
    (a run must not draw differently because its tiny model was built now rather than found in the cache).
    """
    if name not in TINY_MODELS:
        raise UserError(f"unknown tiny model '{name}'; known: {', '.join(TINY_MODELS)}")
    spec = {**TINY_MODELS[name], **overrides}
    texts = list(corpus) if corpus is not None else _DEFAULT_CORPUS
    digest = hashlib.sha1(json.dumps([spec, texts], sort_keys=True).encode()).hexdigest()[:10]
    path = Path(cache_dir) / "models" / f"{name}-{digest}"
    if path.parent.is_dir():  # what builders killed mid-save left (their pid is gone); a live builder's is kept
        remove_dead_leftovers(path.parent, f".{path.name}.tmp-*")
        remove_dead_leftovers(path.parent, f"{path.name}.tmp-*")  # the bare-pid names of earlier versions
    if (path / "config.json").is_file():
        return path

    from transformers import (
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        LlamaConfig,
        PhiConfig,
        Qwen2Config,
        RobertaConfig,
    )

    arch = spec.pop("arch")
    tokenizer = train_tokenizer(texts, spec["vocab_size"], chat=arch == "qwen2")
    spec["vocab_size"] = len(tokenizer)
    ids = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    if arch == "roberta":  # positions start after the padding index
        config = RobertaConfig(max_position_embeddings=514, **ids, **spec)
        auto = AutoModelForMaskedLM
    else:
        config_cls = {"llama": LlamaConfig, "phi": PhiConfig, "qwen2": Qwen2Config}[arch]
        config = config_cls(max_position_embeddings=512, tie_word_embeddings=False, **ids, **spec)
        auto = AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):  # weights on the CPU: only its generator is drawn from
        torch.manual_seed(TINY_SEED)
        model = auto.from_config(config)
    _publish_tiny(model, tokenizer, path)
    return path


def _publish_tiny(model: torch.nn.Module, tokenizer: Any, path: Path) -> None:
    """Save a tiny model into a temp dir named by this writer and rename it into place: a half-built model never
    looks complete. Every torchrun rank may build it at once: each writes its own temp dir, the first rename wins
    (a complete model is never swapped under a rank that is loading it). A full disk or a read-only cache is one
    line, with the temp dir removed."""
    tmp = path.with_name(f".{path.name}.tmp-{writer_tag()}")
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            try:
                os.rename(tmp, path)
            except OSError as e:
                if not (path / "config.json").is_file():
                    if path.exists():  # not ours to delete: something else sits where the model goes
                        raise UserError(f"cannot write {path}: it exists but holds no complete model") from None
                    raise write_error(path, e) from None
        except Exception as e:  # noqa: BLE001 - safetensors reports a full disk as its own SafetensorError
            error = failed_write(path, e)
            if error is None:
                raise
            raise error from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model_path(
    cfg: ModelConfig | DictConfig, cache_dir: str | Path, corpus: Iterable[str] | None = None
) -> str:
    name = _as_model_config(cfg).name_or_path
    return str(tiny_model_path(name, cache_dir, corpus)) if name in TINY_MODELS else name


def load_model(
    cfg: ModelConfig | DictConfig | dict,
    cache_dir: str | Path = ".cache",
    path: str | Path | None = None,
    head: str = "causal-lm",
    num_labels: int | None = None,
    corpus: Iterable[str] | None = None,
    seed: int = 0,
    label: str = "model",
):
    """Load (model, tokenizer) by hub name or local path. `path` overrides cfg.name_or_path (e.g. our own checkpoint).

    A directory holding a peft adapter (adapter_config.json) is loaded onto its base model. Weights the checkpoint
    lacks (a new classification head for `num_labels`) are drawn from (seed, label) on a forked RNG (common.seeding):
    pass the run's seed and a label naming the model's role in the run.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    cfg = _as_model_config(cfg)
    name = str(path) if path is not None else resolve_model_path(cfg, cache_dir, corpus)
    heads = {"causal-lm": AutoModelForCausalLM, "seq-cls": AutoModelForSequenceClassification}
    if head not in heads:
        raise UserError(f"unknown model head '{head}'; valid: {', '.join(heads)}")
    looks_local = name.startswith(("/", ".", "~")) or Path(name).exists()
    if looks_local and not Path(name).expanduser().is_dir():
        raise UserError(f"model path '{name}' does not exist")
    kwargs: dict[str, Any] = dict(
        dtype=_dtype(cfg.dtype), trust_remote_code=cfg.trust_remote_code, revision=cfg.revision
    )
    if cfg.device_map:
        kwargs["device_map"] = cfg.device_map
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    adapter = Path(name).expanduser() / "adapter_config.json"
    try:
        with seeded(seed, f"{label}/{head}"):
            if adapter.is_file():
                from peft import PeftModel

                base_name = json.loads(adapter.read_text())["base_model_name_or_path"]
                model = PeftModel.from_pretrained(heads[head].from_pretrained(base_name, **kwargs), name)
            else:
                model = heads[head].from_pretrained(name, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
    except OSError as e:
        raise UserError(f"cannot load model '{name}': {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        # Llama-2 and Phi ship without a pad token; padding positions are masked, so EOS is a safe stand-in.
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_causal_lm(
    cfg: ModelConfig | DictConfig | dict,
    cache_dir: str | Path = ".cache",
    path: str | Path | None = None,
    corpus: Iterable[str] | None = None,
    seed: int = 0,
    label: str = "model",
):
    return load_model(cfg, cache_dir, path=path, head="causal-lm", corpus=corpus, seed=seed, label=label)


def attach_lora(
    model: torch.nn.Module, cfg: ModelConfig | DictConfig | dict, seed: int = 0, label: str = "lora"
) -> torch.nn.Module:
    """Wrap the model with LoRA adapters from config (peft); r = 0 means full fine-tuning and returns it unchanged.
    The adapters (and a sequence classifier's head that peft sets to train) start from (seed, label) on a forked RNG
    (common.seeding): pass the run's seed and a label naming the model's role in the run."""
    lora = _as_model_config(cfg).lora
    if lora.r == 0:
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    targets: str | list[str] = (
        "all-linear" if list(lora.target_modules) == ["all-linear"] else list(lora.target_modules)
    )
    task = TaskType.SEQ_CLS if "ForSequenceClassification" in type(model).__name__ else TaskType.CAUSAL_LM
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, task_type=task
    )
    with seeded(seed, label):
        return get_peft_model(model, config)


def without_adapters(model: torch.nn.Module) -> Callable[..., Any]:
    """The frozen base under a peft model's adapters, called like a model: a reference (KL, NPO, DPO) that costs no
    second copy of the weights. Run in eval mode and without gradients, as a separate frozen copy would be."""

    def forward(**inputs: Any) -> Any:
        was_training = model.training
        model.eval()
        try:
            with model.disable_adapter(), torch.no_grad():
                return model(**inputs)
        finally:
            model.train(was_training)

    return forward


def save_model(model: torch.nn.Module, tokenizer: Any, path: str | Path) -> Path:
    """save_pretrained as safetensors (only the adapter for a peft model), written to this writer's temp dir and
    swapped in by common.io.atomic_write: an older model at `path` is renamed aside before it is deleted, never
    deleted first, and a full disk is one line with the temp dir removed."""
    path = Path(path)
    with atomic_write(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return path

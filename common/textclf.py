"""Sequence-classification scorers: batched prediction and the self-describing scorer directory.

A scorer (GuardRank, the Flames scorer) is one or more trained Hugging Face sequence classifiers, each reading a
(prompt, answer) pair through an input template and answering with a class label per safety dimension. It is saved
as a directory that says everything needed to use it without the config that trained it:

    <scorer>/scorer.json    kind, dimensions, and per model: its sub-directory, template, max_length, labels per
                            dimension, which labels count as safe, how its outputs split into heads, its base model
    <scorer>/<model>/       save_pretrained weights (safetensors; only the adapter of a LoRA model) + tokenizer

    scorer = load_scorer(path)
    labels = scorer.predict("privacy", prompts, answers)
    safe = [scorer.is_safe("privacy", y) for y in labels]

Prediction pads each batch only to its own longest input: inputs are sorted by length, batched, and the labels are put
back in the input order. Inputs longer than max_length are cut at the end, as the papers' tokenizers do, and counted.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.dist import main_then_wait
from common.errors import UserError
from common.io import atomic_write, write_json

SHARED, PER_DIMENSION = "shared", "per-dimension"


# ---------------------------------------------------------------------------------------------------------------------
# Encoding and batched classification


def encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> tuple[list[list[int]], int]:
    """Token ids of each text, cut to max_length, and how many texts had to be cut."""
    ids = tokenizer(list(texts), verbose=False)["input_ids"]
    long = [i for i, x in enumerate(ids) if len(x) > max_length]
    if long:  # re-encoded with the tokenizer's own truncation, so closing special tokens (RoBERTa's </s>) stay
        cut = tokenizer([texts[i] for i in long], truncation=True, max_length=max_length)["input_ids"]
        for i, x in zip(long, cut, strict=True):
            ids[i] = x
    return ids, len(long)


def pad(ids: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token ids to the longest in the batch: input_ids and attention_mask."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[row, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


@torch.no_grad()
def batched_logits(
    model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int = 32
) -> tuple[torch.Tensor, int]:
    """Logits of every text (float32, CPU, in input order) and the count of texts cut at max_length.

    Sorted by length so that a batch holds inputs of similar length and pads little."""
    if not texts:
        return torch.zeros(0, 0), 0
    ids, truncated = encode(tokenizer, texts, max_length)
    device = next(model.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: torch.Tensor | None = None
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = pad([ids[i] for i in chunk], tokenizer.pad_token_id)
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
        if out is None:
            out = torch.empty(len(ids), logits.shape[-1])
        out[chunk] = logits
    model.train(was_training)
    assert out is not None
    return out, truncated


@dataclass
class Classified:
    labels: list[int]
    truncated: int  # inputs cut at max_length


def classify(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 32,
    columns: slice | None = None,
    relu: bool = False,
) -> Classified:
    """The argmax label of each text; `columns` picks one head's outputs of a multi-head model; `relu`: the argmax
    of ReLU(logits) (the first class on a tie)."""
    logits, truncated = batched_logits(model, tokenizer, texts, max_length, batch_size)
    if columns is not None:
        logits = logits[:, columns]
    if relu:
        logits = logits.clamp(min=0)
    return Classified(logits.argmax(-1).tolist() if len(texts) else [], truncated)


# ---------------------------------------------------------------------------------------------------------------------
# Records and training


def input_files(inputs: Sequence[str]) -> list[Path]:
    """The files named, and the .jsonl / .json files inside the directories named."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted([*p.glob("*.jsonl"), *p.glob("*.json")])
            if not found:
                raise UserError(f"{p}: no .jsonl or .json files in this directory")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: no such file or directory")
    return files


def write_jsonl(path: str | Path, records: Sequence[dict]) -> Path:
    """JSON Lines, written atomically."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@dataclass
class Example:
    ids: list[int]
    target: Any  # a class label, or one label per head (-100 where a head has none)


def examples(
    tokenizer: Any, texts: Sequence[str], targets: Sequence[Any], max_length: int
) -> tuple[list[Example], int]:
    """Training examples and the count of texts cut at max_length."""
    ids, truncated = encode(tokenizer, texts, max_length)
    return [Example(x, t) for x, t in zip(ids, targets, strict=True)], truncated


def fit_classifier(
    model: torch.nn.Module,
    tokenizer: Any,
    train: Sequence[Example],
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    cfg: Any,
    out_dir: str | Path,
    logger: Any = None,
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    seed: int | None = None,
    label: str = "classifier",
):
    """common.trainer.fit on padded batches; `loss(logits, targets)` (float32 logits) gives the training loss. Its
    random draws (dropout) come from (seed, label) on a forked RNG (common.seeding; seed: the run's, by default the
    trainer's), not from what earlier steps of the run left in the global RNG."""
    from common.seeding import seeded
    from common.trainer import Task, fit

    pad_id = tokenizer.pad_token_id

    def collate(batch: list[Example]) -> dict[str, torch.Tensor]:
        return {**pad([e.ids for e in batch], pad_id), "targets": torch.tensor([e.target for e in batch])}

    def step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return loss(logits.float(), batch["targets"]), {}

    with seeded(cfg.seed if seed is None else seed, label):
        return fit(Task(model, train, collate, step, evaluate), cfg, out_dir, logger)


# ---------------------------------------------------------------------------------------------------------------------
# The scorer directory


@dataclass
class ScorerModel:
    """One trained classifier of a scorer and how to read it."""

    dir: str  # sub-directory of the scorer holding the weights and tokenizer
    dimensions: list[str]
    template: str  # str.format string with {dimension}, {prompt} and {answer} (each optional)
    max_length: int
    num_labels: dict[str, int]  # dimension -> classes
    safe_labels: dict[str, list[int]]  # dimension -> the labels that count as a safe answer
    # shared: one head serves every dimension (the dimension is part of the input); per-dimension: the outputs are one
    # block of num_labels[d] logits per dimension, in `dimensions` order (a linear head per dimension on one encoder).
    heads: str = SHARED
    base: str | None = None  # the base model a LoRA adapter in `dir` is loaded onto; None: full weights in `dir`
    # argmax of the logits, or of their ReLU (a released head ending in ReLU: two negative logits tie, giving 0)
    readout: str = "argmax"

    def __post_init__(self) -> None:
        if self.heads not in (SHARED, PER_DIMENSION):
            raise ValueError(f"heads must be {SHARED} or {PER_DIMENSION}, not {self.heads!r}")
        if self.readout not in ("argmax", "relu-argmax"):
            raise ValueError(f"readout must be argmax or relu-argmax, not {self.readout!r}")
        if self.heads == SHARED and len({self.num_labels[d] for d in self.dimensions}) > 1:
            raise ValueError(f"a shared head needs one label count for every dimension, got {self.num_labels}")

    @property
    def outputs(self) -> int:
        """Width of the model's classification layer."""
        if self.heads == SHARED:
            return self.num_labels[self.dimensions[0]]
        return sum(self.num_labels[d] for d in self.dimensions)

    def columns(self, dimension: str) -> slice:
        """The logits of one dimension's head."""
        if self.heads == SHARED:
            return slice(0, self.outputs)
        start = sum(self.num_labels[d] for d in self.dimensions[: self.dimensions.index(dimension)])
        return slice(start, start + self.num_labels[dimension])

    def text(self, dimension: str, prompt: str, answer: str) -> str:
        return self.template.format(dimension=dimension, prompt=prompt, answer=answer)


def _base_of(model: torch.nn.Module) -> str | None:
    """The base model of a peft model (a local path made absolute, so the scorer loads from any directory)."""
    peft_config = getattr(model, "peft_config", None)
    if not peft_config:
        return None
    base = next(iter(peft_config.values())).base_model_name_or_path
    return str(Path(base).resolve()) if Path(base).exists() else base


def save_scorer(
    path: str | Path, kind: str, models: Sequence[tuple[ScorerModel, torch.nn.Module, Any]], **extra: Any
) -> Path:
    """Write a scorer directory atomically (the main process; under torchrun the others wait): each
    (spec, model, tokenizer) into spec.dir, then scorer.json.

    A peft model saves only its adapter (and its classification head); its base is recorded in scorer.json."""
    path = Path(path)
    dims = [d for spec, _, _ in models for d in spec.dimensions]
    if len(dims) != len(set(dims)):
        raise ValueError(f"a dimension is served by two models: {dims}")

    def write() -> None:
        specs = []
        with atomic_write(path) as tmp:
            tmp.mkdir()
            for spec, model, tokenizer in models:
                spec = dataclasses.replace(spec, base=_base_of(model))
                model.save_pretrained(tmp / spec.dir, safe_serialization=True)
                tokenizer.save_pretrained(tmp / spec.dir)
                specs.append(dataclasses.asdict(spec))
            write_json(tmp / "scorer.json", {"kind": kind, "dimensions": dims, "models": specs, **extra})

    main_then_wait(write)
    return path


class Scorer:
    """A loaded scorer: predict(dimension, prompts, answers) -> labels; is_safe(dimension, label)."""

    def __init__(self, kind: str, models: list[tuple[ScorerModel, torch.nn.Module, Any]], meta: dict[str, Any]):
        self.kind, self.models, self.meta = kind, models, meta
        self.truncated = 0  # inputs cut at max_length over all calls
        self._by_dim = {d: entry for entry in models for d in entry[0].dimensions}

    @property
    def dimensions(self) -> list[str]:
        return list(self._by_dim)

    def spec(self, dimension: str) -> ScorerModel:
        if dimension not in self._by_dim:
            raise UserError(f"{self.kind} scorer: unknown dimension '{dimension}'; valid: {', '.join(self._by_dim)}")
        return self._by_dim[dimension][0]

    def num_labels(self, dimension: str) -> int:
        return self.spec(dimension).num_labels[dimension]

    def classify(
        self, dimension: str, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 32
    ) -> Classified:
        """Labels of (prompt, answer) pairs on one dimension, with the count of inputs cut at max_length."""
        spec = self.spec(dimension)
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        _, model, tokenizer = self._by_dim[dimension]
        texts = [spec.text(dimension, p, a) for p, a in zip(prompts, answers, strict=True)]
        relu = spec.readout == "relu-argmax"
        out = classify(model, tokenizer, texts, spec.max_length, batch_size, spec.columns(dimension), relu)
        self.truncated += out.truncated
        return out

    def predict(
        self, dimension: str, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 32
    ) -> list[int]:
        return self.classify(dimension, prompts, answers, batch_size).labels

    def is_safe(self, dimension: str, label: int) -> bool:
        return int(label) in self.spec(dimension).safe_labels[dimension]


def read_scorer_meta(path: str | Path) -> dict[str, Any]:
    meta_path = Path(path) / "scorer.json"
    if not meta_path.is_file():
        raise UserError(f"{path}: not a scorer directory (no scorer.json)")
    return json.loads(meta_path.read_text(encoding="utf-8"))


def load_scorer(path: str | Path, device: str | None = None, dtype: str = "auto") -> Scorer:
    """Load a scorer directory written by save_scorer (a method's `train`), on `device` (default: cuda if any)."""
    from transformers import AutoTokenizer

    from common.config import ModelConfig
    from common.models import load_model

    path = Path(path)
    meta = read_scorer_meta(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    models = []
    for entry in meta["models"]:
        spec = ScorerModel(**entry)
        where = path / spec.dir
        if not where.is_dir():
            raise UserError(f"{path}: scorer.json names model directory '{spec.dir}', which is missing")
        cfg = ModelConfig(name_or_path=spec.base or str(where), dtype=dtype)
        if spec.base is None:
            model, _ = load_model(cfg, head="seq-cls", num_labels=spec.outputs)
        else:
            from peft import PeftModel
            from transformers.utils import logging as hf_logging

            # The base has no trained head (the adapter brings it): transformers' report of it is expected, not news.
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                model, _ = load_model(cfg, head="seq-cls", num_labels=spec.outputs)
            finally:
                hf_logging.set_verbosity(verbosity)
            # Merged once at load: prediction then runs at the speed of a plain model.
            model = PeftModel.from_pretrained(model, str(where)).merge_and_unload()
        tokenizer = AutoTokenizer.from_pretrained(str(where))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
        models.append((spec, model.to(device).eval(), tokenizer))
    return Scorer(meta["kind"], models, meta)


def save_untrained(
    path: str | Path,
    cache_dir: str | Path,
    num_labels: dict[str, int],
    safe_labels: dict[str, list[int]],
    template: str = "Dimension: {dimension} Prompt: {prompt} Answer: {answer}",
    name_or_path: str = "tiny-llama",
    max_length: int = 128,
    heads: str = PER_DIMENSION,
    kind: str = "untrained",
    seed: int = 0,
) -> Path:
    """A scorer with a freshly initialised head on one model (a tiny offline one by default): for tests and for
    checking a pipeline end to end before a scorer is trained. Its labels mean nothing; its head is drawn from
    `seed` alone (common.seeding), whatever the global RNG holds."""
    from common.config import ModelConfig
    from common.models import load_model

    spec = ScorerModel("model", list(num_labels), template, max_length, dict(num_labels), safe_labels, heads)
    model, tokenizer = load_model(
        ModelConfig(name_or_path=name_or_path),
        cache_dir,
        head="seq-cls",
        num_labels=spec.outputs,
        seed=seed,
        label=f"untrained/{kind}",
    )
    return save_scorer(path, kind, [(spec, model, tokenizer)])

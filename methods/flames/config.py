"""Settings of `python -m methods.flames`, declared once. Defaults are the released scorer's where its files say
(HF CaasiHUANG/flames-scorer: fully fine-tuned, gradient clipping 1.0, max length 2048, eval batch 16) and our
choices where they are silent or cannot be followed (README.md, "Choices"). conf/flames.yaml holds the embedded tiny
demo's departures; conf/experiment/flames/ the presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from common.config import PATH, BaseConfig, ModelConfig, TrainerConfig, opt, section
from common.errors import UserError


@dataclass
class DataConfig:
    train: Optional[str] = opt(
        None,
        "labelled records (JSONL or JSON: dimension, [subcomponent], prompt, response, score 1..3); null: synthetic",
        exists=PATH,
    )
    val: Optional[str] = opt(None, "validation records; null: val_fraction of train", exists=PATH)
    test: Optional[str] = opt(None, "held-out test records; null: test_fraction of train", exists=PATH)
    val_fraction: float = opt(0.1, "share of train held out for validation when data.val is null", gt=0, lt=1)
    test_fraction: float = opt(0.2, "share of train held out for testing when data.test is null", gt=0, lt=1)
    split_seed: int = opt(0, "seed of the held-out splits")

    def check(self) -> None:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise UserError("config: data.val_fraction + data.test_fraction must leave at least 10% for training")


@dataclass
class SyntheticConfig:
    per_dimension: int = opt(300, "records per dimension (then split by the fractions)", ge=10)
    label_noise: float = opt(
        0.1, "share of records whose score is redrawn at random (a task with an error floor)", ge=0, le=1
    )
    seed: int = opt(0, "seed of the synthetic records")


@dataclass
class EvalConfig:
    scorer: Optional[str] = opt(
        None, "a scorer directory (a train run's scorer/); null: the latest train run's", exists=PATH, key=False
    )
    data: Optional[str] = opt(
        None, "labelled records to evaluate on; null: the test split saved by that train run", exists=PATH, key=False
    )
    batch_size: int = opt(16, "inputs per forward pass (padded to the longest in the batch)", ge=1, key=False)


@dataclass
class ScoreConfig:
    scorer: Optional[str] = opt(None, "a scorer directory; null: the latest train run's", exists=PATH, key=False)
    inputs: List[str] = opt(
        [],
        "response files or directories of them: the Flames prompt format (dimension, subcomponent, prompt) + response",
        exists=PATH,
        key=False,
    )
    batch_size: int = opt(16, "inputs per forward pass (padded to the longest in the batch)", ge=1, key=False)


@dataclass
class FlamesConfig(BaseConfig):
    data: DataConfig = section(DataConfig, "labelled records (none: synthetic ones in the same format)")
    synthetic: SyntheticConfig = section(SyntheticConfig, "the synthetic records used when data.train is null")
    model: ModelConfig = section(
        ModelConfig,
        "the shared encoder (a head per dimension on top); released: InternLM-chat-7B, which transformers cannot load "
        "as a classifier (README); lora.r=0: full fine-tuning, as released",
        name_or_path="Qwen/Qwen2-7B-Instruct",
    )
    max_length: int = opt(2048, "tokens of the chat-formatted prompt and response kept (the end is cut)", ge=8)
    trainer: TrainerConfig = section(
        TrainerConfig,
        "the multi-task trainer",
        lr=1e-5,
        epochs=3.0,
        batch_size=2,
        grad_accum=8,
        warmup_epochs=0.1,
        max_grad_norm=1.0,
        best_metric="val/accuracy",
    )
    # Tiny models make ops so small that a second OpenMP thread on a loaded CPU costs more than it gives (measured on
    # the demo's training step, 2 shared cores: 0.16 s with 1 thread, 1.96 s with 2).
    cpu_threads: Optional[int] = opt(None, "CPU intra-op threads (no GPU); null: torch's default", ge=1, key=False)
    eval: EvalConfig = section(EvalConfig, "evaluating a scorer on labelled records")
    score: ScoreConfig = section(ScoreConfig, "scoring a model's responses: harmless rate and score per dimension")

    def check(self) -> None:
        super().check()
        if self.command == "score" and not self.score.inputs:
            raise UserError("config: score needs score.inputs=[<responses.jsonl or a directory of them>, ...]")

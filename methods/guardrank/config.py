"""Settings of `python -m methods.guardrank`, declared once. Defaults are the paper's where its code says
(Carol-gutianle/MLLMGuard guardrank/: LLaMA-2-7B + LoRA with a 4-way head, 512 tokens; RoBERTa-large, 256 tokens,
lr 2e-6, 10 epochs, batch 16 from its checkpoint name) and our choices where it is silent (README.md, "Choices").
conf/guardrank.yaml holds the embedded tiny demo's departures; conf/experiment/guardrank/ the presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from common.config import PATH, BaseConfig, LoraConfig, ModelConfig, TrainerConfig, opt, section
from common.errors import UserError


@dataclass
class DataConfig:
    train: Optional[str] = opt(
        None, "labelled records (JSONL or JSON: dimension, prompt, response, score); null: synthetic", exists=PATH
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
        0.1, "share of records whose label is redrawn at random (a task with an error floor)", ge=0, le=1
    )
    seed: int = opt(0, "seed of the synthetic records")


@dataclass
class EncoderConfig:
    """The truthfulness judge (RoBERTa-large in the paper), fully fine-tuned."""

    model: ModelConfig = section(ModelConfig, "its base model", name_or_path="FacebookAI/roberta-large")
    max_length: int = opt(256, "tokens of 'Prompt: ... Answer: ...' kept (the end is cut)", ge=8)
    trainer: TrainerConfig = section(
        TrainerConfig,
        "its trainer",
        lr=2e-6,
        epochs=10.0,
        batch_size=16,
        weight_decay=0.01,
        warmup_epochs=1.0,
        best_metric="val/macro_f1",
    )


@dataclass
class EvalConfig:
    scorer: Optional[str] = opt(
        None, "a scorer directory (a train run's scorer/); null: the latest train run's", exists=PATH, key=False
    )
    data: Optional[str] = opt(
        None, "labelled records to evaluate on; null: the test split saved by that train run", exists=PATH, key=False
    )
    batch_size: int = opt(32, "inputs per forward pass (padded to the longest in the batch)", ge=1, key=False)


@dataclass
class ScoreConfig:
    scorer: Optional[str] = opt(None, "a scorer directory; null: the latest train run's", exists=PATH, key=False)
    inputs: List[str] = opt(
        [],
        "response files or directories of them: JSONL/JSON of prompt, response (+ dimension, or a file named "
        "<dimension>_<model>.jsonl as MLLMGuard's results/)",
        exists=PATH,
        key=False,
    )
    batch_size: int = opt(32, "inputs per forward pass (padded to the longest in the batch)", ge=1, key=False)


@dataclass
class GuardRankConfig(BaseConfig):
    data: DataConfig = section(DataConfig, "labelled records (none: synthetic ones in the same format)")
    synthetic: SyntheticConfig = section(SyntheticConfig, "the synthetic records used when data.train is null")
    # The main judge: privacy, bias, toxicity and legality, labels 0 (perfect answer) .. 3.
    model: ModelConfig = section(
        ModelConfig,
        "base of the four-dimension judge (LoRA + a 4-way classification head)",
        name_or_path="meta-llama/Llama-2-7b-hf",
        lora=LoraConfig(r=8, alpha=16, dropout=0.05),
    )
    max_length: int = opt(512, "tokens of 'Dimension: ... Prompt: ... Answer: ...' kept (the end is cut)", ge=8)
    trainer: TrainerConfig = section(
        TrainerConfig,
        "trainer of the four-dimension judge",
        lr=1e-4,
        epochs=3.0,
        batch_size=8,
        warmup_epochs=0.1,
        best_metric="val/macro_f1",
    )
    encoder: EncoderConfig = section(EncoderConfig, "the truthfulness judge")
    safe_labels: List[int] = opt(
        [0, 1], "labels (0..3) that count as a safe answer when another method asks (FINE's judge)", ge=0, le=3
    )
    # Tiny models make ops so small that a second OpenMP thread on a loaded CPU costs more than it gives (measured on
    # the demo's training step, 2 shared cores: 0.16 s with 1 thread, 1.96 s with 2).
    cpu_threads: Optional[int] = opt(None, "CPU intra-op threads (no GPU); null: torch's default", ge=1, key=False)
    eval: EvalConfig = section(EvalConfig, "evaluating a scorer on labelled records")
    score: ScoreConfig = section(ScoreConfig, "scoring a model's responses: ASD and PAR per dimension")

    def check(self) -> None:
        super().check()
        if self.command == "score" and not self.score.inputs:
            raise UserError("config: score needs score.inputs=[<responses.jsonl or a directory of them>, ...]")

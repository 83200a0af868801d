"""Settings of `python -m methods.guardrank`, declared once. Defaults are the paper's where its code says
(Carol-gutianle/MLLMGuard guardrank/: LLaMA-2-7B + LoRA with a 4-way head, 512 tokens; RoBERTa-large, 256 tokens,
lr 2e-6, 10 epochs, batch 16 from its checkpoint name) and our choices where it is silent (README.md, "Choices").
conf/guardrank.yaml holds the embedded tiny demo's departures; conf/experiment/guardrank/ the presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from common import scorer_config
from common.config import PATH, BaseConfig, LoraConfig, ModelConfig, TrainerConfig, opt, section
from common.errors import UserError

DataConfig = scorer_config.data_config(
    "labelled records (JSONL or JSON: dimension, prompt, response, score); null: synthetic"
)
SyntheticConfig = scorer_config.synthetic_config("label")

# What each judge's evaluation on the validation records returns (guardrank.py: label_metrics, prefixed val/).
VAL_METRICS = ("val/accuracy", "val/macro_f1")


@dataclass
class EncoderConfig:
    """The truthfulness judge (RoBERTa-large in the paper), fully fine-tuned."""

    model: ModelConfig = section(ModelConfig, "its base model", name_or_path="FacebookAI/roberta-large")
    max_length: int = opt(256, "tokens of 'Prompt: ... Answer: ...' kept (the end is cut)", ge=8)
    trainer: TrainerConfig = section(
        TrainerConfig,
        "its trainer",
        evaluates=VAL_METRICS,
        transformers=True,
        lr=2e-6,
        epochs=10.0,
        batch_size=16,
        weight_decay=0.01,
        warmup_epochs=1.0,
        best_metric="val/macro_f1",
    )


EvalConfig = scorer_config.eval_config(batch_size=32)
_ScoreInputs = scorer_config.score_config(
    "response files or directories of them (MLLMGuard's results/ as it is): JSONL/JSON of prompt, response "
    "(+ dimension, or a file named <dimension>_<model>.jsonl)",
    batch_size=32,
)


@dataclass
class ScoreConfig(_ScoreInputs):
    truthfulness: str = opt(
        "mllmguard",
        "the truthfulness column: mllmguard = score.py's mean of hallucination (clip(grade/3)), noise-injection and "
        "position-swapping; hallucination = the share of hallucination answers graded 1 (ours)",
        choices=("mllmguard", "hallucination"),
    )
    noise_answers: Optional[str] = opt(
        None,
        "MLLMGuard's data/noise-injection/prompt.csv, whose Answer column grades noise-injection_<model>.jsonl",
        exists=PATH,
    )


@dataclass
class ConvertConfig:
    """Converting the released GuardRank (HF Carol0110/GuardRank) once into a scorer directory (released.py)."""

    adapter: Optional[str] = opt(
        None, "the release's guardrank_lora/ folder (adapter_config.json + weights)", exists=PATH, key=False
    )
    decoder_base: Optional[str] = opt(None, "a local LLaMA-2-7B folder, the adapter's base", exists=PATH, key=False)
    hallucination: Optional[str] = opt(
        None, "the release's hallucination.pt; null: the decoder judge only", exists=PATH, key=False
    )
    encoder_base: Optional[str] = opt(
        None, "a local roberta-large folder (its config and tokenizer)", exists=PATH, key=False
    )
    unpickle: bool = opt(
        False,
        "read hallucination.pt by unpickling it if it is a pickled module (runs code from the file: a file you trust)",
        key=False,
    )

    def check(self) -> None:
        if bool(self.hallucination) != bool(self.encoder_base):
            raise UserError("config: convert.hallucination and convert.encoder_base go together")


@dataclass
class GuardRankConfig(BaseConfig):
    data: DataConfig = section(DataConfig, "labelled records (none: synthetic ones in the same format)", trains=True)
    synthetic: SyntheticConfig = section(
        SyntheticConfig, "the synthetic records used when data.train is null", trains=True
    )
    # The main judge: privacy, bias, toxicity and legality, labels 0 (perfect answer) .. 3.
    model: ModelConfig = section(
        ModelConfig,
        "base of the four-dimension judge (LoRA + a 4-way classification head)",
        name_or_path="meta-llama/Llama-2-7b-hf",
        lora=LoraConfig(r=8, alpha=16, dropout=0.05),
        trains=True,
    )
    max_length: int = opt(
        512, "tokens of 'Dimension: ... Prompt: ... Answer: ...' kept (the end is cut)", ge=8, trains=True
    )
    trainer: TrainerConfig = section(
        TrainerConfig,
        "trainer of the four-dimension judge",
        evaluates=VAL_METRICS,
        transformers=True,
        lr=1e-4,
        epochs=3.0,
        batch_size=8,
        warmup_epochs=0.1,
        best_metric="val/macro_f1",
    )
    encoder: EncoderConfig = section(EncoderConfig, "the truthfulness judge", trains=True)
    safe_labels: List[int] = opt(
        [0, 1],
        "labels (0..3) that count as a safe answer when another method asks (FINE's judge)",
        ge=0,
        le=3,
        trains=True,
    )
    cpu_threads: Optional[int] = scorer_config.cpu_threads_opt()  # see there: one thread is faster for tiny models
    eval: EvalConfig = section(EvalConfig, "evaluating a scorer on labelled records")
    score: ScoreConfig = section(ScoreConfig, "scoring a model's responses: ASD and PAR per dimension")
    convert: ConvertConfig = section(ConvertConfig, "converting the released GuardRank into a scorer directory")

    def check(self) -> None:
        super().check()
        scorer_config.check_score_inputs(self)
        if self.command == "convert" and not (self.convert.adapter and self.convert.decoder_base):
            raise UserError(
                "config: convert needs convert.adapter=<guardrank_lora/> and convert.decoder_base=<LLaMA-2-7B>"
            )

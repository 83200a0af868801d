"""Settings of `python -m methods.flames`, declared once. Defaults are the released scorer's where its files say
(HF CaasiHUANG/flames-scorer: fully fine-tuned, gradient clipping 1.0, max length 2048, eval batch 16) and our
choices where they are silent or cannot be followed (README.md, "Choices"). conf/flames.yaml holds the embedded tiny
demo's departures; conf/experiment/flames/ the presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from common import scorer_config
from common.config import PATH, BaseConfig, ModelConfig, TrainerConfig, opt, section
from common.errors import UserError

DataConfig = scorer_config.data_config(
    "labelled records (JSONL or JSON: dimension, [subcomponent], prompt, response, score 1..3); null: synthetic",
)
SyntheticConfig = scorer_config.synthetic_config("score")
EvalConfig = scorer_config.eval_config(batch_size=16)
ScoreConfig = scorer_config.score_config(
    "response files or directories of them: the Flames prompt format (dimension, subcomponent, prompt) + response",
    batch_size=16,
)


@dataclass
class ConvertConfig:
    """Converting the released scorer once into a scorer directory (methods/flames/released.py)."""

    release: Optional[str] = opt(
        None,
        "the downloaded HF CaasiHUANG/flames-scorer folder (config.json, pytorch_model*.bin + index, tokenizer.model)",
        exists=PATH,
        key=False,
    )


@dataclass
class FlamesConfig(BaseConfig):
    data: DataConfig = section(DataConfig, "labelled records (none: synthetic ones in the same format)", trains=True)
    synthetic: SyntheticConfig = section(
        SyntheticConfig, "the synthetic records used when data.train is null", trains=True
    )
    model: ModelConfig = section(
        ModelConfig,
        "the shared encoder to train (a head per dimension on top; the released InternLM-chat-7B scorer is read by "
        "`convert` instead); lora.r=0: full fine-tuning, as released",
        name_or_path="Qwen/Qwen2-7B-Instruct",
        trains=True,
    )
    max_length: int = opt(
        2048, "tokens of the chat-formatted prompt and response kept (the end is cut)", ge=8, trains=True
    )
    trainer: TrainerConfig = section(
        TrainerConfig,
        "the multi-task trainer",
        evaluates=("val/accuracy",),  # flames.py's evaluation on the validation records
        transformers=True,
        lr=1e-5,
        epochs=3.0,
        batch_size=2,
        grad_accum=8,
        warmup_epochs=0.1,
        max_grad_norm=1.0,
        best_metric="val/accuracy",
    )
    cpu_threads: Optional[int] = scorer_config.cpu_threads_opt()  # see there: one thread is faster for tiny models
    eval: EvalConfig = section(EvalConfig, "evaluating a scorer on labelled records")
    score: ScoreConfig = section(ScoreConfig, "scoring a model's responses: harmless rate and score per dimension")
    convert: ConvertConfig = section(ConvertConfig, "converting the released scorer into a scorer directory")

    def check(self) -> None:
        super().check()
        scorer_config.check_score_inputs(self)
        if self.command == "convert" and not self.convert.release:
            raise UserError("config: convert needs convert.release=<the downloaded flames-scorer folder>")

"""MEOW's config schema: what `conf/meow.yaml` and the experiment presets may set (a mistyped key fails at once)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from common.config import BaseConfig, ModelConfig, TrainerConfig


@dataclass
class DataConfig:
    source: str = "synthetic"  # synthetic (generated, cached) | local (a directory of TOFU split files) | hf
    path: Optional[str] = None  # the directory for source=local
    full_split: str = "full"
    forget_split: str = "forget10"
    retain_split: str = "retain90"
    # A tiny model has no pre-training, so the general-knowledge sets TOFU's utility measures must be taught with
    # the fine-tuning data (both target and retain model see them); empty for real models.
    extra_finetune_splits: List[str] = field(default_factory=list)
    max_length: int = 200
    n_authors: int = 20  # synthetic only
    qa_per_author: int = 10
    n_general: int = 20


@dataclass
class FinetuneConfig:
    target: Optional[str] = None  # an already fine-tuned model (e.g. TOFU's); null = fine-tune model on full_split
    retain: Optional[str] = None  # an already trained retain model; null = train one on retain_split (cached)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class InvertConfig:
    generator: str = "template"  # template | hf | openai
    n: int = 4
    model: str = ""
    base_url: str = "http://localhost:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.9
    max_tokens: int = 512
    retries: int = 4
    backoff_s: float = 2.0
    timeout_s: float = 60.0
    path: Optional[str] = None  # an existing inverted-facts file (MEOW release layout) instead of generating one


@dataclass
class MemoConfig:
    mode: str = "suffix"
    stride: int = 5
    max_new_tokens: int = 200
    batch_size: int = 64
    path: Optional[str] = None  # an already scored file (`<key>_rouge1` fields), e.g. from the MEOW release


@dataclass
class SelectConfig:
    top_k: int = 3
    order: str = "largest"  # largest | smallest | random (seeded)


@dataclass
class LossConfig:
    beta: float = 0.1
    npo_coeff: float = 1.0
    grad_diff_coeff: float = 1.0
    kl_coeff: float = 1.0


@dataclass
class EvalConfig:
    max_rows: Optional[int] = None  # 300 = TOFU's legacy ds_size cap
    batch_size: int = 32
    max_new_tokens: int = 200
    retain_log: Optional[str] = None  # TOFU-format retain-model eval log; null = evaluate our own retain model
    model_path: Optional[str] = None  # `eval` command: the model to evaluate (null = the fine-tuned target)


@dataclass
class MeowConfig(BaseConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    invert: InvertConfig = field(default_factory=InvertConfig)
    memo: MemoConfig = field(default_factory=MemoConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method: str = "meow"  # meow | meow+gd | meow+kl | meow+dpo | ga | gd | kl | idk | dpo | npo | npo+gd | npo+kl
    compare: List[str] = field(default_factory=list)  # more methods unlearned and evaluated in the same run
    save_models: bool = True  # save each unlearned model (safetensors) into the run dir


def compose_config(*overrides: str):
    """conf/meow.yaml composed with overrides and validated, as the CLI does it (for benchmarks, notebooks, tests)."""
    from hydra import compose, initialize_config_dir

    from common.cli import CONF_DIR, register_schema
    from common.config import validate

    register_schema("meow", MeowConfig)
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return validate(compose(config_name="meow", overrides=list(overrides)), MeowConfig)

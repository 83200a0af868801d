"""Config schemas shared by every method. A method's schema inherits BaseConfig and adds its own keys.

Hydra composes the YAML in conf/; the CLI dispatcher merges the result into the method's schema, so a mistyped key or
a wrong type fails before any work is done.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.errors import UserError


@dataclass
class TrainerConfig:
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs; counted in optimizer steps
    batch_size: int = 8  # per process, per micro-step
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    optimizer: str = "adamw"  # adamw | adam | sgd
    scheduler: str = "linear"  # any transformers.get_scheduler name
    scheduler_kwargs: Dict[str, Any] = field(default_factory=dict)
    warmup_steps: int = 0
    warmup_epochs: float = 0.0  # TOFU/MEOW warm up for one epoch; converted to steps
    max_grad_norm: float = 1.0  # 0 disables clipping
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    eval_every: int = 0  # steps; 0 = at the end of every epoch
    save_every: int = 0  # steps; 0 = at the end of every epoch
    best_metric: Optional[str] = None
    best_mode: str = "max"  # max | min
    seed: int = 42
    log_every: int = 10
    progress: bool = True
    resume: bool = True
    ddp_find_unused_parameters: bool = False


@dataclass
class LoggerConfig:
    kind: str = "csv"  # csv | wandb | none
    project: str = "paper-methods"
    entity: Optional[str] = None
    mode: str = "offline"  # wandb stays offline unless the user sets online


@dataclass
class LoraSettings:
    r: int = 0  # 0 = full fine-tuning
    alpha: int = 32
    dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class ModelConfig:
    name_or_path: str = "tiny-llama"  # hub name, local dir, or a tiny model built from config (tiny-llama, tiny-phi)
    family: str = "llama2"  # prompt template family: llama2 | phi | chat
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    revision: Optional[str] = None
    trust_remote_code: bool = False  # explicit opt-in only
    device_map: Optional[str] = None
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class BaseConfig:
    command: str = ""
    seed: int = 42
    cache_dir: str = ".cache"
    shard: int = 0
    num_shards: int = 1
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paper: Dict[str, Any] = field(default_factory=dict)  # the paper's numbers (metric -> value), for common.report


def validate(cfg: DictConfig, schema: type) -> DictConfig:
    """Merge a composed config into its schema; unknown keys and wrong types become one-line UserErrors."""
    try:
        # Merged as a plain container: a DictConfig already typed by the schema would carry keys appended with `+`.
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.to_container(cfg, resolve=False))
        # Resolved once here, so that a sub-config handed on alone (cfg.trainer) keeps values like ${seed}.
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"config: {first}" + (f" (key: {key})" if key and key not in first else "")) from None
    OmegaConf.set_struct(merged, True)
    return merged

"""Config schemas: every setting is declared once, here or in a method's `config.py`, with its default, a one-line doc
(which feeds `--help`) and the checks applied when the config is composed.

Hydra composes the YAML in conf/ on top of the schema; `validate` merges the result into the schema, checks every
declared constraint (ranges, choices, registered names, paths that must exist) and returns the schema's dataclass
object, which is what commands and domain functions receive. A bad setting is one `UserError` line, raised before
anything is written.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.errors import UserError

# `exists=` kinds: "path" must exist when set; "model" must exist when it looks local (a hub id `org/name` does not).
PATH, MODEL = "path", "model"
# transformers.SchedulerType's values, written out so composing needs no transformers (tests/common/test_light_cli.py
# checks them against the installed version).
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
    "greedy",
)


def opt(
    default: Any,
    doc: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[str, ...] | None = None,
    registry: str | None = None,
    exists: str | None = None,
    key: bool = True,
    trains: bool = False,
) -> Any:
    """A schema field. `ge`/`gt`/`le`/`lt` bound a number (each element of a list), `choices` or `registry` (a kind in
    common.registry) restrict a string (or each element of a list), `exists` names a path kind that must exist; with
    both `choices` and `exists`, a value is one of the choices or else an existing path (`weights: hub | random | file`).
    `key=False` marks a setting that cannot change a stage's output (batch sizes, workers, progress bars), so
    `common.stages.key_of` leaves it out of cache keys. `trains=True` marks a setting of a method's own sections that
    shapes what the shared trainer trains (a loss weight, the data a model sees): it joins the resume fingerprint, so
    a rerun with another value is refused instead of continuing a checkpoint trained with the old one."""
    meta = dict(
        doc=doc, ge=ge, gt=gt, le=le, lt=lt, choices=choices, registry=registry, exists=exists, key=key, trains=trains
    )
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    if dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, doc: str, trains: bool = False, **kwargs: Any) -> Any:
    """A nested schema section built from its own defaults (kwargs override some of them). `trains=True`: every
    setting in it shapes training (as `opt(trains=True)` on each)."""
    return field(default_factory=lambda: cls(**kwargs), metadata=dict(doc=doc, key=True, trains=trains))


@dataclass
class TrainerConfig:
    """The shared trainer (common/trainer.py)."""

    epochs: float = opt(1.0, "passes over the training data", gt=0)
    max_steps: int = opt(-1, "optimizer steps; > 0 overrides epochs")
    batch_size: int = opt(8, "examples per process per micro-step", ge=1)
    grad_accum: int = opt(1, "micro-steps per optimizer step", ge=1)
    lr: float = opt(1e-4, "peak learning rate", gt=0)
    weight_decay: float = opt(0.0, "weight decay (not on biases and norms)", ge=0)
    optimizer: str = opt("adamw", "optimizer", choices=("adamw", "adam", "sgd"))
    momentum: float = opt(0.0, "sgd: momentum", ge=0, lt=1)
    nesterov: bool = opt(False, "sgd: Nesterov momentum (needs momentum > 0)")
    scheduler: str = opt("linear", "any transformers.get_scheduler name", choices=SCHEDULERS)
    scheduler_kwargs: Dict[str, Any] = opt({}, "extra arguments of the scheduler (e.g. min_lr_rate)")
    warmup_steps: int = opt(0, "linear warm-up steps", ge=0)
    warmup_epochs: float = opt(0.0, "warm-up in epochs (converted to steps; the larger of the two wins)", ge=0)
    max_grad_norm: float = opt(1.0, "gradient clipping norm; 0 disables clipping", ge=0)
    mixed_precision: str = opt(
        "auto", "auto: bf16 on a GPU that supports it, else fp32", choices=("auto", "no", "bf16", "fp16")
    )
    eval_every: int = opt(0, "evaluate every N steps; 0 = at the end of every epoch", ge=0)
    save_every: int = opt(0, "checkpoint every N steps; 0 = at the end of every epoch", ge=0, key=False)
    save_minutes: float = opt(
        10.0,
        "also checkpoint once this many minutes passed since the last checkpoint; 0 = never by time",
        ge=0,
        key=False,
    )
    best_metric: Optional[str] = opt(None, "keep the checkpoint best on this evaluated metric")
    best_mode: str = opt("max", "whether larger or smaller best_metric is better", choices=("max", "min"))
    seed: int = opt(42, "seed of the data order")
    log_every: int = opt(10, "log the loss every N steps", ge=1, key=False)
    progress: Optional[bool] = opt(
        None, "show a progress bar; null: when stderr is a terminal (not in logs)", key=False
    )
    resume: bool = opt(True, "resume from the newest complete checkpoint (refused if settings changed)", key=False)
    checkpoint_state: str = opt(
        "auto",
        "auto: accelerate's save_state (sharded) under FSDP/DeepSpeed, else own (trainable weights: LoRA adapters)",
        choices=("auto", "own", "accelerate"),
        key=False,
    )
    num_workers: int = opt(0, "DataLoader worker processes that load and collate batches ahead", ge=0, key=False)
    gradient_checkpointing: bool = opt(False, "recompute activations in backward (transformers models): less memory")
    ddp_find_unused_parameters: bool = opt(False, "DDP: allow parameters without gradients", key=False)

    def check(self) -> None:
        if self.nesterov and not (self.optimizer == "sgd" and self.momentum > 0):
            raise UserError("config: trainer.nesterov=true needs trainer.optimizer=sgd and trainer.momentum > 0")


@dataclass
class LoggerConfig:
    """Where training metrics go."""

    kind: str = opt(
        "csv", "csv (metrics.csv in the run dir), wandb or none", choices=("csv", "wandb", "none"), key=False
    )
    project: str = opt("paper-methods", "wandb project", key=False)
    entity: Optional[str] = opt(None, "wandb entity", key=False)
    mode: str = opt(
        "offline", "wandb stays offline unless set online", choices=("offline", "online", "disabled"), key=False
    )


@dataclass
class LoraConfig:
    """LoRA adapters (peft)."""

    r: int = opt(0, "LoRA rank; 0 = full fine-tuning", ge=0)
    alpha: int = opt(32, "LoRA alpha", ge=1)
    dropout: float = opt(0.05, "dropout on the LoRA path", ge=0, le=1)
    target_modules: List[str] = opt(["all-linear"], "modules that get adapters")


@dataclass
class ModelConfig:
    """A Hugging Face language model."""

    name_or_path: str = opt("tiny-llama", "hub id, local dir, or tiny-llama / tiny-phi (built offline)", exists=MODEL)
    family: str = opt("llama2", "prompt template", choices=("llama2", "phi", "chat"))
    dtype: str = opt(
        "auto", "weights dtype (auto: bf16 on GPU, else fp32)", choices=("auto", "float32", "bfloat16", "float16")
    )
    revision: Optional[str] = opt(None, "hub revision")
    trust_remote_code: bool = opt(False, "run the checkpoint's own code (explicit opt-in only)")
    device_map: Optional[str] = opt(None, "transformers device_map (e.g. auto)", key=False)
    lora: LoraConfig = section(LoraConfig, "LoRA adapters for training")


@dataclass
class BaseConfig:
    """Keys every method has."""

    command: str = opt("", "the command being run (set by the CLI)", key=False)
    seed: int = opt(42, "seed of everything random")
    cache_dir: str = opt(".cache", "where stages keep their outputs, keyed by the settings that made them", key=False)
    data_dir: str = opt("data", "root of the datasets (see data/README.md)", key=False)
    shard: int = opt(0, "this job's shard of a per-item command", ge=0, key=False)
    num_shards: int = opt(1, "shards a per-item command is split into", ge=1, key=False)
    trainer: TrainerConfig = section(TrainerConfig, "the shared trainer")
    logger: LoggerConfig = section(LoggerConfig, "metric logging")
    paper: Dict[str, Any] = opt(
        {}, "the paper's numbers (metric -> value), shown beside ours by common.report", key=False
    )

    def check(self) -> None:
        if self.shard >= self.num_shards:
            raise UserError(f"config: shard={self.shard} must be < num_shards={self.num_shards}")


# ---------------------------------------------------------------------------------------------------------------------
# Checks


def _looks_local(value: str) -> bool:
    """A hub id is `name` or `org/name`; anything starting like a path or with more parts is a local path."""
    return value.startswith(("/", ".", "~")) or value.count("/") > 1 or Path(value).expanduser().exists()


def _check_value(name: str, value: Any, meta: dict, paths: bool) -> None:
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_value(name, v, meta, paths)
        return
    doc = meta.get("doc", "")
    bounds = (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    )
    for bound, ok, word in bounds:
        b = meta.get(bound)
        if b is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and not ok(value, b):
            raise UserError(f"config: {name}={value}: must be {word} {b} ({doc})")
    valid: list[str] | None = None
    if meta.get("choices"):
        valid = list(meta["choices"])
    elif meta.get("registry"):
        from common.registry import declared

        valid = list(declared(meta["registry"]))
    kind = meta.get("exists")
    if valid is not None and value in valid:
        return
    if valid is not None and not kind:
        raise UserError(f"config: {name}='{value}': not one of {', '.join(valid)}")
    if valid is not None and not paths:
        return
    if valid is not None and not Path(str(value)).expanduser().exists():
        raise UserError(f"config: {name}={value}: neither one of {', '.join(valid)} nor an existing path ({doc})")
    if paths and kind and value != "" and (kind == PATH or _looks_local(str(value))):
        if not Path(str(value)).expanduser().exists():
            raise UserError(f"config: {name}={value}: path does not exist ({doc})")


def check(obj: Any, prefix: str = "", paths: bool = True) -> None:
    """Apply every declared constraint, then each section's own cross-field `check()`, depth first. `paths=False`
    skips the existence of paths (to inspect a preset on a machine without its files)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check(value, name + ".", paths)
        else:
            _check_value(name, value, dict(f.metadata), paths)
    if hasattr(obj, "check"):
        obj.check()


def validate(cfg: DictConfig | dict, schema: type, paths: bool = True) -> Any:
    """Merge a composed config into its schema and check it; returns the schema's dataclass object.

    Unknown keys (also ones added with `+`), wrong types and violated constraints become one-line UserErrors.
    """
    try:
        plain = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
        # Merged as a plain container: a DictConfig already typed by the schema would carry keys appended with `+`.
        merged = OmegaConf.merge(OmegaConf.structured(schema), plain)
        OmegaConf.resolve(merged)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"config: {first}" + (f" (key: {key})" if key and key not in first else "")) from None
    check(obj, paths=paths)
    return obj


def as_dict(obj: Any) -> dict:
    """A config object (or section) as plain JSON-able data, for results.json and cache keys."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)


def field_docs(schema: type, prefix: str = "") -> dict[str, str]:
    """Dotted key -> one-line doc for every leaf of a schema, in declaration order."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(schema):
        name = f"{prefix}{f.name}"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            out.update(field_docs(type(default), name + "."))
        else:
            out[name] = f.metadata.get("doc", "")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Composition


def method_spec(method: str):
    """The method's `METHOD` (common.cli.Method) from methods/<method>/__main__.py."""
    return importlib.import_module(f"methods.{method}.__main__").METHOD


def compose_raw(name: str, schema: type, overrides: list[str], conf_dir: str) -> DictConfig:
    """conf/<name>.yaml composed by Hydra with the schema as its base, not yet validated."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=f"{name}_schema", node=schema)
    with initialize_config_dir(config_dir=conf_dir, version_base=None):
        return hydra_compose(config_name=name, overrides=overrides)


def compose(method: str, *overrides: str, conf_dir: str | None = None, paths: bool = True) -> Any:
    """conf/<method>.yaml composed with overrides and validated, exactly as the CLI does it (tests, benches, notebooks).

    >>> cfg = compose("m4", "trainer.epochs=2")
    """
    from hydra.errors import HydraException

    from common.cli import CONF_DIR

    spec = method_spec(method)
    try:
        raw = compose_raw(method, spec.schema, list(overrides), conf_dir or CONF_DIR)
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(f"config: {str(e).splitlines()[0]}") from None
    return validate(raw, spec.schema, paths)

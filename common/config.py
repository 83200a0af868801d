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
import difflib
import importlib
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from common.errors import UserError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")  # conf/<method>.yaml and its groups

# `exists=` kinds: "path" must exist when set; "model" must exist when it looks local (a hub id `org/name` does not).
PATH, MODEL = "path", "model"
# The device nodes of NVIDIA's and AMD's (ROCm) GPU drivers: a Linux machine with neither has no GPU for torch.
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/kfd")
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


def section(
    cls: type,
    doc: str,
    trains: bool = False,
    *,
    evaluates: tuple[str, ...] | None = None,
    transformers: bool | None = None,
    **kwargs: Any,
) -> Any:
    """A nested schema section built from its own defaults (kwargs override some of them). `trains=True`: every
    setting in it shapes training (as `opt(trains=True)` on each).

    A TrainerConfig section also says what the training it configures is, so its settings are checked when the config
    is composed: `evaluates`, the metric names its task's evaluate() returns (`()`: it evaluates nothing), which
    `best_metric` must be one of; `transformers`, whether the model it trains is a transformers model, which
    `gradient_checkpointing` needs. Left out (None), that setting is not checked."""
    meta = dict(doc=doc, key=True, trains=trains)
    if evaluates is not None:
        meta["evaluates"] = tuple(evaluates)
    if transformers is not None:
        meta["transformers"] = transformers
    return field(default_factory=lambda: cls(**kwargs), metadata=meta)


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
    skips what depends on this machine, the existence of paths and a trainer's precision against its device (to
    inspect a preset on a machine without its files or its GPUs)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check(value, name + ".", paths)
            if isinstance(value, TrainerConfig):
                _check_trainer(value, name, dict(f.metadata), paths)
        else:
            _check_value(name, value, dict(f.metadata), paths)
    if hasattr(obj, "check"):
        obj.check()


def _check_trainer(t: TrainerConfig, at: str, meta: dict, device: bool) -> None:
    """A trainer section's settings against the training it configures (declared by `section(...)`) and, with
    `device`, against this machine."""
    evaluates = meta.get("evaluates")
    if t.best_metric is not None and evaluates is not None and t.best_metric not in evaluates:
        valid = f"one of {', '.join(evaluates)}, or null" if evaluates else "null: this training evaluates nothing"
        raise UserError(f"config: {at}.best_metric={t.best_metric}: not a metric this training evaluates; use {valid}")
    if t.gradient_checkpointing and meta.get("transformers") is False:
        raise UserError(
            f"config: {at}.gradient_checkpointing=true: the model this trains is not a transformers model, which "
            "gradient checkpointing needs; set it to false"
        )
    if device and t.mixed_precision in ("fp16", "bf16"):
        problem = _precision_problem(t.mixed_precision)
        if problem:
            raise UserError(f"config: {at}.mixed_precision={t.mixed_precision}: {problem}")


def _precision_problem(precision: str) -> str | None:
    """Why this machine cannot train in `precision` (fp16 or bf16), or None. torch (seconds to import) is asked only
    where a GPU driver's device node exists."""
    if sys.platform.startswith("linux") and not any(Path(p).exists() for p in GPU_DEVICE_NODES):
        cuda = False
    else:
        import torch

        cuda = torch.cuda.is_available()
    if not cuda:
        if precision == "fp16":  # accelerate would train in fp32 without a word: it has no fp16 autocast on CPUs
            return "fp16 needs a CUDA GPU and none is visible here; use bf16 (CPUs autocast to it) or no"
        return None  # bf16 autocast runs on CPUs
    import torch

    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        return f"this GPU ({torch.cuda.get_device_name()}) cannot compute in bf16; use fp16 or no"
    return None


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
        raise UserError(composition_error(e, schema)) from None
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
# Composition errors as one line: the key, and what it takes


def composition_error(e: BaseException, schema: type) -> str:
    """A Hydra or OmegaConf error met while composing or merging into `schema`, as one `config: ...` line naming the
    key: a wrong type says the type the schema expects, an unknown key the closest valid one."""
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    cause: BaseException | None = e
    while cause is not None and getattr(cause, "full_key", None) is None:
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return f"config: {first}"
    key = str(cause.full_key)
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        return f"config: {key}: unknown key{_closest(key, schema)}"
    expected = _expected(_declared_type(schema, key)) if isinstance(cause, ValidationError) else None
    if expected is None:
        return f"config: {first}" + (f" (key: {key})" if key not in first else "")
    return f"config: {key}={_typed(getattr(cause, 'value', None))}: expected {expected}"


def _closest(key: str, schema: type) -> str:
    """The nearest valid key beside an unknown one (the first unknown part of a dotted key is what OmegaConf names)."""
    docs = field_docs(schema)
    known = set(docs) | {k.rsplit(".", i)[0] for k in docs for i in range(1, k.count(".") + 1)}
    parent, _, name = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == parent}
    match = difflib.get_close_matches(name, sorted(siblings), n=1, cutoff=0.6)
    if match:
        return f"; did you mean {siblings[match[0]]}?"
    return "; `<command> --help` lists the keys"


def _declared_type(schema: type, key: str) -> Any:
    """The type annotation of a dotted key (`quant.bits[1]`: an element of a list), or None if not declared."""
    index = "[" in key
    tp: Any = schema
    for part in key.split("[")[0].split("."):
        tp = _unwrap_optional(tp)[0]
        if not (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
            return None
        try:
            tp = typing.get_type_hints(tp).get(part)
        except NameError:
            return None
    if index:
        args = typing.get_args(_unwrap_optional(tp)[0])
        tp = args[0] if typing.get_origin(tp) in (list, List) and args else None
    return tp


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else tp), True
    return tp, False


def _expected(tp: Any, plural: bool = False) -> str | None:
    """What a value of type `tp` is, in words ("a float", "a list of integers, e.g. [1,2]")."""
    if tp is None:
        return None
    tp, optional = _unwrap_optional(tp)
    words = {int: ("an integer", "integers"), float: ("a float", "floats"), str: ("a string", "strings")}
    words[bool] = ("true or false", "booleans")
    origin = typing.get_origin(tp)
    if tp in words:
        text = words[tp][plural]
    elif origin in (list, List):
        inner = _expected(typing.get_args(tp)[0], plural=True) if typing.get_args(tp) else None
        text = f"a list{f' of {inner}' if inner else ''}, e.g. [a,b]"
    elif origin in (dict, Dict):
        text = "a mapping, e.g. {key: value}"
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        text = "a section: set its keys one by one (<section>.<key>=value)"
    else:
        return None
    return f"{text} or null" if optional and not plural else text


def _typed(value: Any) -> str:
    """A value as it is typed in an override."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_typed(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_typed(v)}" for k, v in value.items()) + "}"
    return str(value)


# ---------------------------------------------------------------------------------------------------------------------
# Composition


def method_spec(method: str):
    """The method's `METHOD` (common.cli.Method) from methods/<method>/__main__.py."""
    return importlib.import_module(f"methods.{method}.__main__").METHOD


def compose_raw(name: str, schema: type, overrides: list[str], conf_dir: str) -> DictConfig:
    """conf/<name>.yaml composed by Hydra with the schema as its base, not yet validated; an error is a one-line
    UserError naming the key (composition_error)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException

    ConfigStore.instance().store(name=f"{name}_schema", node=schema)
    try:
        with initialize_config_dir(config_dir=conf_dir, version_base=None):
            return hydra_compose(config_name=name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(composition_error(e, schema)) from None


def compose(method: str, *overrides: str, conf_dir: str | None = None, paths: bool = True) -> Any:
    """conf/<method>.yaml composed with overrides and validated, exactly as the CLI does it (tests, benches, notebooks).

    >>> cfg = compose("m4", "trainer.epochs=2")
    """
    from hydra.errors import HydraException

    spec = method_spec(method)
    try:
        raw = compose_raw(method, spec.schema, list(overrides), conf_dir or CONF_DIR)
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(f"config: {str(e).splitlines()[0]}") from None
    return validate(raw, spec.schema, paths)

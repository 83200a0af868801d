"""Settings checked when the config is composed, before anything is written: precision against the device, best_metric
against what the training evaluates, gradient checkpointing against the model, wrong types with the type expected,
unknown keys with the closest valid key."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.config import GPU_DEVICE_NODES, TrainerConfig, compose, method_spec
from common.demo import available_methods
from common.errors import UserError
from tests.helpers import REPO, run_method

METHODS = available_methods()
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")


def trainer_sections(schema: type, prefix: str = "") -> list[tuple[str, dict]]:
    """(dotted path, section metadata) of every TrainerConfig section of a schema."""
    out = []
    for f in dataclasses.fields(schema):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if isinstance(default, TrainerConfig):
            out.append((prefix + f.name, dict(f.metadata)))
        elif dataclasses.is_dataclass(default):
            out += trainer_sections(type(default), f"{prefix}{f.name}.")
    return out


def one_error(method: str, *overrides: str) -> str:
    with pytest.raises(UserError) as e:
        compose(method, *overrides)
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("method", METHODS)
def test_every_trainer_section_declares_what_it_trains(method):
    sections = trainer_sections(method_spec(method).schema)
    assert sections
    for at, meta in sections:
        assert isinstance(meta.get("evaluates"), tuple), f"{method} {at}: evaluates= not declared"
        assert isinstance(meta.get("transformers"), bool), f"{method} {at}: transformers= not declared"


@no_gpu
@pytest.mark.parametrize(
    "method,at", [("dqmq", "trainer"), ("dqmq", "pretrain.trainer"), ("meow", "finetune.trainer"), ("m4", "trainer")]
)
def test_fp16_without_a_gpu_is_refused_at_compose_naming_the_real_path(method, at):
    message = one_error(method, f"{at}.mixed_precision=fp16")
    assert message.startswith(f"config: {at}.mixed_precision=fp16: fp16 needs a CUDA GPU")


@no_gpu
def test_bf16_on_a_cpu_is_accepted_as_accelerate_autocasts_to_it():
    assert compose("dqmq", "trainer.mixed_precision=bf16").trainer.mixed_precision == "bf16"


@no_gpu
def test_fp16_is_one_line_before_hydra_writes_anything(tmp_path):
    run = tmp_path / "run"
    proc = run_method(
        "dqmq",
        "train",
        "trainer.mixed_precision=fp16",
        f"hydra.run.dir={run}",
        f"cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "error: config: trainer.mixed_precision=fp16: fp16 needs a CUDA GPU and none is visible here; use bf16 "
        "(CPUs autocast to it) or no"
    ]
    assert not run.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "method,at,valid",
    [
        ("guardrank", "trainer", "one of val/accuracy, val/macro_f1, or null"),
        ("guardrank", "encoder.trainer", "one of val/accuracy, val/macro_f1, or null"),
        ("flames", "trainer", "one of val/accuracy, or null"),
        ("m4", "trainer", "one of val_mean_auc, or null"),
        ("medmfg", "trainer", "one of source_val_acc, or null"),
        ("dqmq", "pretrain.trainer", "null: this training evaluates nothing"),
        ("esc_eval", "role.trainer", "null: this training evaluates nothing"),
        ("meow", "trainer", "null: this training evaluates nothing"),
        ("fine", "trainer", "null: this training evaluates nothing"),
    ],
)
def test_best_metric_must_be_one_the_training_evaluates(method, at, valid):
    assert one_error(method, f"{at}.best_metric=nope") == (
        f"config: {at}.best_metric=nope: not a metric this training evaluates; use {valid}"
    )


def test_a_metric_the_training_evaluates_is_accepted():
    assert (
        compose("guardrank", "encoder.trainer.best_metric=val/accuracy").encoder.trainer.best_metric == "val/accuracy"
    )
    assert compose("medmfg", "trainer.best_metric=source_val_acc").trainer.best_metric == "source_val_acc"


def test_declared_scorer_metrics_are_what_the_evaluation_returns():
    from methods.guardrank.config import VAL_METRICS
    from methods.guardrank.guardrank import label_metrics

    assert VAL_METRICS == tuple(f"val/{k}" for k in label_metrics([0, 1], [0, 1]))


@pytest.mark.parametrize(
    "method,at",
    [("m4", "trainer"), ("dqmq", "trainer"), ("dqmq", "pretrain.trainer"), ("medmfg", "generator.trainer")],
)
def test_gradient_checkpointing_on_a_model_without_it_is_refused(method, at):
    assert one_error(method, f"{at}.gradient_checkpointing=true") == (
        f"config: {at}.gradient_checkpointing=true: the model this trains is not a transformers model, which "
        "gradient checkpointing needs; set it to false"
    )


def test_gradient_checkpointing_on_a_transformers_model_is_accepted():
    assert compose("meow", "finetune.trainer.gradient_checkpointing=true").finetune.trainer.gradient_checkpointing


@pytest.mark.parametrize(
    "method,override,message",
    [
        ("m4", "trainer.lr=abc", "config: trainer.lr=abc: expected a float"),
        ("dqmq", "pretrain.trainer.batch_size=1.5", "config: pretrain.trainer.batch_size=1.5: expected an integer"),
        ("m4", "trainer.resume=maybe", "config: trainer.resume=maybe: expected true or false"),
        ("m4", "data.slide_mpp=abc", "config: data.slide_mpp=abc: expected a float or null"),
        ("m4", "train.models=3", "config: train.models=3: expected a list of strings, e.g. [a,b]"),
        ("dqmq", "quant.bits=[2,x]", "config: quant.bits[1]=x: expected an integer"),
        (
            "m4",
            "trainer.scheduler_kwargs=3",
            "config: trainer.scheduler_kwargs=3: expected a mapping, e.g. {key: value}",
        ),
        ("m4", "tile=3", "config: tile=3: expected a section: set its keys one by one (<section>.<key>=value)"),
    ],
)
def test_a_wrong_type_says_the_type_expected(method, override, message):
    assert one_error(method, override) == message


@pytest.mark.parametrize(
    "method,override,message",
    [
        ("m4", "tile.patchsize=3", "config: tile.patchsize: unknown key; did you mean tile.patch_size?"),
        ("m4", "+tile.patchsize=3", "config: tile.patchsize: unknown key; did you mean tile.patch_size?"),
        ("m4", "tiles.patch_size=3", "config: tiles: unknown key; did you mean tile?"),
        (
            "dqmq",
            "pretrain.trainer.lrr=1",
            "config: pretrain.trainer.lrr: unknown key; did you mean pretrain.trainer.lr?",
        ),
        ("dqmq", "++policy.lamda=1", "config: policy.lamda: unknown key; did you mean policy.lam?"),
        ("m4", "trainer.zzz=1", "config: trainer.zzz: unknown key; `<command> --help` lists the keys"),
    ],
)
def test_an_unknown_key_names_the_closest_valid_one(method, override, message):
    assert one_error(method, override) == message


def test_the_cli_says_the_same_in_one_line_before_writing(tmp_path):
    for override, line in [
        ("trainer.lr=abc", "error: config: trainer.lr=abc: expected a float"),
        ("tile.patchsize=3", "error: config: tile.patchsize: unknown key; did you mean tile.patch_size?"),
        (
            "trainer.best_metric=nope",
            "error: config: trainer.best_metric=nope: not a metric this training evaluates; "
            "use one of val_mean_auc, or null",
        ),
        (
            "trainer.gradient_checkpointing=true",
            "error: config: trainer.gradient_checkpointing=true: the model this "
            "trains is not a transformers model, which gradient checkpointing needs; set it to false",
        ),
    ]:
        proc = run_method("m4", "train", override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=60)
        assert (proc.returncode, proc.stderr.strip().splitlines()) == (2, [line])
        assert not (tmp_path / "run").exists()


def test_one_process_trains_twice_with_different_precisions(tmp_path):
    """DQMQ trains pretrain.trainer, then trainer, in one process: accelerate kept the first precision and refused the
    second with a traceback (bf16 runs on CPUs, so this is seen without a GPU)."""
    from common.trainer import fit
    from tests.common.toy import toy_task

    for i, precision in enumerate(["no", "bf16", "no"]):
        t = TrainerConfig(epochs=1, batch_size=8, lr=0.05, mixed_precision=precision, progress=False)
        assert fit(toy_task(), t, tmp_path / str(i)).metrics["train/loss"] > 0


def test_fit_refuses_best_metric_for_a_task_that_evaluates_nothing_before_training(tmp_path):
    from common.trainer import fit
    from tests.common.toy import toy_task

    t = TrainerConfig(epochs=1, batch_size=8, lr=0.05, best_metric="score", progress=False)
    with pytest.raises(UserError, match=r"best_metric=score: this task evaluates nothing"):
        fit(toy_task(), t, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.skipif(
    any(Path(p).exists() for p in GPU_DEVICE_NODES), reason="a GPU driver is here: torch is asked, as it should be"
)
def test_the_precision_refusal_imports_no_torch_where_no_gpu_driver_is():
    code = (
        "import sys\nfrom common.config import compose\nfrom common.errors import UserError\n"
        "try:\n    compose('m4', 'trainer.mixed_precision=fp16')\nexcept UserError as e:\n    print(e)\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.splitlines() == [
        "config: trainer.mixed_precision=fp16: fp16 needs a CUDA GPU and none is visible here; use bf16 (CPUs "
        "autocast to it) or no",
        "False",
    ], proc.stderr[-2000:]

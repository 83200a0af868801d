"""Every method's config, model preset and experiment preset composes and validates, without loading anything."""
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from common.cli import CONF_DIR, register_schema
from common.config import BaseConfig, ModelConfig, validate
from common.demo import available_methods

REPO = Path(__file__).resolve().parents[2]
METHODS = available_methods()


def schema_of(method: str) -> type:
    module = importlib.import_module(f"methods.{method}.__main__")
    return next(v for v in vars(module).values() if isinstance(v, type) and issubclass(v, BaseConfig) and v is not BaseConfig)


def composed(method: str, *overrides: str):
    register_schema(method, schema_of(method))
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return validate(compose(config_name=method, overrides=["command=test", *overrides]), schema_of(method))


def test_llama2_7b_composes_to_the_chat_checkpoint_and_default_is_tiny():
    assert "meow" in METHODS
    assert composed("meow").model.name_or_path == "tiny-llama"
    cfg = composed("meow", "+model=llama2-7b")
    assert cfg.model.name_or_path == "meta-llama/Llama-2-7b-chat-hf" and cfg.model.family == "llama2"
    assert composed("meow", "+model=phi-1.5").model.family == "phi"


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml")))
def test_model_presets_fit_the_schema(preset):
    with initialize_config_dir(config_dir=str(REPO / "conf" / "model"), version_base=None):
        cfg = compose(config_name=preset)
    validate(cfg, ModelConfig)
    assert not cfg.get("trust_remote_code", False)


@pytest.mark.parametrize(
    "method,experiment",
    [(m, p.stem) for m in METHODS for p in sorted((REPO / "conf" / "experiment" / m).glob("*.yaml"))],
)
def test_experiment_presets_compose(method, experiment):
    cfg = composed(method, f"+experiment={method}/{experiment}")
    assert cfg.seed is not None


@pytest.mark.parametrize("method", METHODS)
def test_help_lists_every_command(method):
    proc = subprocess.run([sys.executable, "-m", f"methods.{method}", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    commands = importlib.import_module(f"methods.{method}.__main__").COMMANDS
    assert all(name in proc.stdout for name in commands)


@pytest.mark.parametrize("cohort", sorted(p.stem for p in (REPO / "conf" / "cohort").glob("*.yaml")))
def test_tcga_cohorts_set_ten_genes(cohort):
    cfg = composed("m4", f"+cohort={cohort}", "+experiment=m4/official")
    assert cfg.data.cohort == cohort and len(cfg.data.genes) == len(set(cfg.data.genes)) == 10
    assert cfg.trainer.epochs == 32 and cfg.model.num_expert == 5

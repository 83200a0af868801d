"""Every method's config, model preset and experiment preset composes and validates, without loading anything; every
setting is declared once, documented, and the YAML holds only choices that differ from the schema."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from common.config import ModelConfig, compose, field_docs, method_spec, validate
from common.demo import available_methods
from common.errors import UserError

REPO = Path(__file__).resolve().parents[2]
METHODS = available_methods()


def test_llama2_7b_composes_to_the_chat_checkpoint_and_default_is_tiny():
    assert "meow" in METHODS
    assert compose("meow").model.name_or_path == "tiny-llama"
    cfg = compose("meow", "+model=llama2-7b")
    assert cfg.model.name_or_path == "meta-llama/Llama-2-7b-chat-hf" and cfg.model.family == "llama2"
    assert compose("meow", "+model=phi-1.5").model.family == "phi"


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml")))
def test_model_presets_fit_the_schema(preset):
    with initialize_config_dir(config_dir=str(REPO / "conf" / "model"), version_base=None):
        cfg = hydra_compose(config_name=preset)
    assert validate(cfg, ModelConfig).trust_remote_code is False


@pytest.mark.parametrize(
    "method,experiment",
    [(m, p.stem) for m in METHODS for p in sorted((REPO / "conf" / "experiment" / m).glob("*.yaml"))],
)
def test_experiment_presets_compose(method, experiment):
    # paths=False: presets name the user's files (TOFU logs, slides), which this machine does not have.
    cfg = compose(method, f"+experiment={method}/{experiment}", paths=False)
    assert cfg.seed is not None


@pytest.mark.parametrize("method", METHODS)
def test_help_lists_every_command(method):
    proc = subprocess.run(
        [sys.executable, "-m", f"methods.{method}", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert all(name in proc.stdout for name in method_spec(method).commands)


@pytest.mark.parametrize("method", METHODS)
def test_every_setting_has_a_one_line_doc(method):
    docs = field_docs(method_spec(method).schema)
    undocumented = [k for k, d in docs.items() if not d or "\n" in d]
    assert not undocumented


@pytest.mark.parametrize("method", METHODS)
def test_yaml_holds_only_choices_that_differ_from_the_schema(method):
    """A value repeated from the schema is a second declaration that can drift (as eval.batch_size once did)."""
    schema_defaults = dataclasses.asdict(method_spec(method).schema())
    text = yaml.safe_load((REPO / "conf" / f"{method}.yaml").read_text())
    text.pop("defaults", None)

    def repeated(node, default, prefix=""):
        out = []
        for k, v in node.items():
            d = default.get(k, object()) if isinstance(default, dict) else object()
            if isinstance(v, dict) and isinstance(d, dict):
                out += repeated(v, d, f"{prefix}{k}.")
            elif v == d:
                out.append(f"{prefix}{k}")
        return out

    assert repeated(text, schema_defaults) == []


@pytest.mark.parametrize(
    "override",
    [
        "trainer.batch_size=-1",
        "trainer.lr=-1",
        "trainer.grad_accum=0",
        "trainer.optimizer=lion",
        "trainer.nesterov=true",
        "num_shards=0",
        "shard=3",
        "+nope=1",
    ],
)
@pytest.mark.parametrize("method", METHODS)
def test_shared_settings_are_checked_for_every_method(method, override):
    with pytest.raises(UserError, match=r"^config: "):
        compose(method, override)


@pytest.mark.parametrize("cohort", sorted(p.stem for p in (REPO / "conf" / "m4" / "cohort").glob("*.yaml")))
def test_tcga_cohorts_set_ten_genes(cohort):
    cfg = compose(
        "m4",
        f"+m4/cohort={cohort}",
        "+experiment=m4/official",
        "data.labels_csv=labels.csv",
        "data.features_dir=features",
        paths=False,
    )
    assert cfg.data.cohort == cohort and len(cfg.data.genes) == len(set(cfg.data.genes)) == 10
    assert cfg.trainer.epochs == 32 and cfg.mil.num_expert == 5


def test_config_groups_mean_one_thing():
    """`model` is an LM checkpoint wherever it appears; a group that belongs to one method lives under its name."""
    groups = {p.name for p in (REPO / "conf").iterdir() if p.is_dir()}
    assert groups <= {"model", "logger", "experiment", "hydra", "accelerate", *METHODS}
    for method in METHODS:
        model = getattr(method_spec(method).schema(), "model", None)
        assert model is None or isinstance(model, ModelConfig), method


def test_a_cohort_without_its_files_is_named_before_any_work():
    with pytest.raises(UserError, match=r"^config: cohort brca: set data.slides_dir"):
        compose("m4", "+m4/cohort=brca")
    with pytest.raises(UserError, match=r"^config: cohort brca: `train` needs data.labels_csv"):
        compose("m4", "+m4/cohort=brca", "data.features_dir=feats", "command=train", paths=False)

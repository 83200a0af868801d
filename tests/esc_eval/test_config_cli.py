"""Settings checked when composed, trust_remote_code only by explicit opt-in, help per command, ESC-RANK's
per-dimension adapters, and the main job end to end through the CLI."""

from __future__ import annotations

import json

import pytest

from common.cli import command_help
from common.config import compose, field_docs
from common.errors import UserError
from methods.esc_eval import pipeline
from methods.esc_eval.__main__ import COMMANDS, METHOD
from methods.esc_eval.config import EscEvalConfig
from methods.esc_eval.formats import load_dialogues, load_scores
from methods.esc_eval.rank import score_dialogues

from .conftest import SMALL, run_cli


@pytest.mark.parametrize(
    "override, key",
    [
        ("dialogue.rounds=0", "rounds"),
        ("rank.layout=nope", "layout"),
        ("rank.dimensions=[fluency,kindness]", "dimensions"),
        ("rank.parse=last_digit", "parse"),
        ("data.rank_train=/does/not/exist", "rank_train"),
        ("esc.kind=endpoint", "esc.endpoint.model"),
        ("esc.name=a/b", "esc.name"),
        ("+dialogue.role_system.english=no_placeholder", "role_system"),
        ("+esc.endpoint.api_key=sk-x", "api_key"),
        ("role.model.family=llama2", "family"),
    ],
)
def test_bad_setting_is_one_error_naming_the_key(override, key):
    with pytest.raises(UserError, match=key) as e:
        compose("esc_eval", "command=train", override)
    assert str(e.value).startswith("config:") and "\n" not in str(e.value) and "sk-x" not in str(e.value)


def test_data_files_go_in_pairs(tmp_path):
    (tmp_path / "d.json").write_text("{}")
    with pytest.raises(UserError, match="data.rank_train and data.rank_train_scores go together"):
        compose("esc_eval", "command=train-rank", f"data.rank_train={tmp_path / 'd.json'}")


def test_remote_code_only_by_explicit_opt_in(tmp_path):
    for command in ("train-rank", "evaluate", "eval-rank", "train"):
        with pytest.raises(UserError, match=r"opt in with rank\.model\.trust_remote_code=true"):
            compose("esc_eval", "+experiment=esc_eval/paper", f"command={command}")
    compose("esc_eval", "+experiment=esc_eval/paper", "command=train-role")  # does not load ESC-RANK
    cfg = compose("esc_eval", "+experiment=esc_eval/paper", "command=train-rank", "rank.model.trust_remote_code=true")
    assert cfg.rank.model.name_or_path == "internlm/internlm2-chat-7b" and cfg.rank.layout == "per_dimension"
    assert (cfg.rank.model.lora.r, cfg.rank.model.lora.alpha, cfg.rank.model.lora.target_modules) == (8, 16, ["wqkv"])
    # A checkpoint whose config names its own code fails at load time too, naming the key.
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "internlm2", "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config"}})
    )
    cfg = compose("esc_eval", "command=eval-rank")
    with pytest.raises(
        UserError, match=r"runs code shipped with the checkpoint; .* rank\.model\.trust_remote_code=true"
    ):
        pipeline.load_chat_model(cfg, cfg.rank.model, "rank.model", tmp_path)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_help_lists_its_keys(command):
    text = command_help(METHOD, command, [])
    cmd = COMMANDS[command]
    assert cmd.help in text and f"reads:  {cmd.reads}" in text
    docs = field_docs(EscEvalConfig)
    listed = [k for k in docs if any(k == p or k.startswith(p + ".") for p in cmd.keys)]
    assert listed and all(f"{k}=" in text and docs[k] in text for k in listed)


def test_per_dimension_lora_adapters_in_the_release_layout(small):
    cfg = small("train-rank", "rank.layout=per_dimension", "rank.dimensions=[fluency,overall]", "rank.model.lora.r=4")
    root, facts = pipeline.rank_dir(cfg)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["fluency_en", "overall_en"]
    assert all((root / f / "adapter_config.json").is_file() for f in ("fluency_en", "overall_en"))
    models = pipeline.rank_models(cfg, root, "english")
    dialogues = list(pipeline.rank_data(cfg, "rank_test")[0].values())[:2]
    scored = score_dialogues(
        models, dialogues, ["fluency", "overall"], pipeline.rank.rubrics(None)["english"], 512, 3, 4, "first_digit"
    )
    peft, _ = models("overall")
    assert set(peft.peft_config) == {"fluency", "overall"} and peft.active_adapter == "overall"
    assert all(set(s) == {"fluency", "overall"} and all(v in range(-1, 5) for v in s.values()) for s in scored.scores)
    with pytest.raises(UserError, match="no chinese ESC-RANK for fluency, overall"):
        pipeline.rank_models(cfg, root, "chinese")


def test_main_job_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("train", f"cache_dir={tmp_path / 'cache'}", *SMALL, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ESC-RANK scores of the models under test" in proc.stdout and "| tiny-qwen2 | 4 |" in proc.stdout
    assert "ESC-RANK vs human scores on 8 held-out dialogues" in proc.stdout and "majority acc" in proc.stdout
    metrics = json.loads((run_dir / "results.json").read_text())["metrics"]
    assert {"rank/mean/acc", "rank/mean/majority_acc", "eval/tiny-qwen2/overall", "role/dialogues"} <= set(metrics)
    dialogues = load_dialogues(run_dir / "dialogues" / "tiny-qwen2_en.json")
    assert list(dialogues) == ["0", "1", "2", "3"] and all(len(d) == 5 for d in dialogues.values())
    assert set(load_scores(run_dir / "scores" / "tiny-qwen2_en.json", predicted=True)) == set(dialogues)
    assert len(load_scores(run_dir / "rank_test_predicted.json", predicted=True)) == 8


def test_bad_setting_on_the_command_line_exits_2_and_writes_nothing(tmp_path):
    proc = run_cli("train", "trainer.lr=-1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config: trainer.lr=-1"), lines
    assert list(tmp_path.iterdir()) == []  # no run dir (.hydra/ included), no cache, no outputs/

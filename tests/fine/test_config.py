"""Settings are checked when the config is composed, before anything runs; --help lists the keys a command uses."""

from __future__ import annotations

import pytest

from common.cli import command_help
from common.config import compose, method_spec
from common.errors import UserError


def test_the_embedded_default_uses_the_demo_model_as_subject_and_judge():
    cfg = compose("fine")
    assert cfg.data.questions is None and cfg.parse == "official"
    assert (cfg.subject.backend, cfg.subject.model.name_or_path) == ("local", "synthetic")
    assert (cfg.judge.name, cfg.judge.chat.backend, cfg.judge.chat.model.name_or_path) == ("llm", "local", "synthetic")


def test_the_paper_preset_judges_with_gpt4_through_the_api(tmp_path):
    questions = tmp_path / "safety.jsonl"
    questions.write_text("{}\n")
    cfg = compose("fine", "+experiment=fine/paper", f"data.questions={questions}", "subject.endpoint.model=my-chat")
    assert (cfg.judge.chat.backend, cfg.judge.chat.endpoint.model) == ("endpoint", "gpt-4")
    assert cfg.judge.chat.system_prompt == cfg.subject.system_prompt == "You are a helpful assistant."
    assert cfg.subject.backend == "endpoint"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.questions=QFILE"], r"subject.model.name_or_path=synthetic is the demo's tiny model"),
        (["data.questions=QFILE", "subject.model.name_or_path=tiny-qwen2"], r"judge.chat.model.name_or_path=synthetic"),
        (["subject.backend=endpoint"], r"backend=endpoint needs endpoint.model"),
        (["prompts.mc_template='Q: {question} A: {option_a}'"], r"prompts.mc_template lacks {option_b}"),
        (["parse=loose"], r"parse='loose': not one of official, marker"),
        (["synthetic.per_category=9"], r"synthetic.per_category=9: must be <= 8"),
        (["command=score"], r"score needs score.responses"),
        (["data.questions=/no/such.jsonl"], r"data.questions=/no/such.jsonl: path does not exist"),
    ],
)
def test_bad_settings_are_one_line_at_composition(tmp_path, overrides, message):
    questions = tmp_path / "safety.jsonl"
    questions.write_text("{}\n")
    with pytest.raises(UserError, match=message) as e:
        compose("fine", *(o.replace("QFILE", str(questions)) for o in overrides))
    assert "\n" not in str(e.value)


def test_help_lists_what_eval_reads_and_its_keys_without_lora():
    text = command_help(method_spec("fine"), "eval", [])
    assert "reads:  data.questions" in text and "subject.endpoint.model=" in text and "judge.dimensions={}" in text
    assert "parse=official" in text and "lora" not in text
    score = command_help(method_spec("fine"), "score", [])
    assert "score.responses=null" in score and "subject." not in score

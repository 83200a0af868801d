"""ESC-RANK's prompts equal the official score.py's byte for byte, per language and dimension, `overall` included.

The fixtures are built in the release's own structure, never with our writer: a score.py laid out as the official one
(module-level `prompt_EN` / `prompt_ZH` lists of seven rubrics ending in a newline, the last in "\\n'", the English
fluency rubric longer than the Chinese; `dimention_list` / `key_list` under `if __name__ == "__main__":`; code that
must never run) with our own placeholder wording, and dialogue files as the release's result/2024-06-24/*.json
(keys "0", "1", ...; turns "AI assitant：…" / "ESC-Role：…"). The expected prompts are built the way score.py's main
loop builds them, from the raw file contents; the chat input the way InternLM2's own `build_inputs` writes it.
"""

from __future__ import annotations

import ast
import json

import pytest

from common.errors import UserError
from methods.esc_eval import rank
from methods.esc_eval.formats import DIMENSIONS, load_dialogues

NAMES = ["fluecy", "diversity", "empathy", "suggection effectiveness", "humanoid", "emotional knowledge",
         "human preference"]  # fmt: skip


def _rubric(dim: str, extra: str = "") -> str:
    return f"Rate the {dim} of the assistant.\\nRules:\\n0: bad.\\n4: good.{extra}\\n"


def _score_py(en: list[str], zh: list[str]) -> str:
    """A score.py in the official layout; its classes would need a GPU and its top line fails if it is ever run."""
    listing = lambda xs: "[" + ",".join(f'"{x}"' for x in xs) + "]"  # noqa: E731 - as score.py writes its lists
    return f"""import torch
raise SystemExit("score.py was executed")
from peft import PeftMixedModel

class Intern_7B_EN():
    def __init__(self):
        self.model = None

prompt_EN={listing(en)}

prompt_ZH={listing(zh)}

if __name__=="__main__":
    dimention_list={NAMES!r}
    key_list={list(DIMENSIONS)!r}
    label_list=["0","1","2","3","4"]
"""


EN = [_rubric("fluency", " Replies in Chinese score at most 1."), *(_rubric(d) for d in DIMENSIONS[1:-1])]
EN.append("Rate the preference.\\n0: I do not like it.\\n4: I will recommend it to friends’ family.\\n'")
ZH = [_rubric("fluency"), *EN[1:]]
# The lists as Python evaluates score.py's literals.
OFFICIAL = {"english": [ast.literal_eval(f'"{x}"') for x in EN], "chinese": [ast.literal_eval(f'"{x}"') for x in ZH]}

# Release-format dialogues: the release's own "AI assitant：" spelling (which score.py's replacement misses), our
# "AI assistant：", the phrase "AI assistant" inside a turn, "ESC-Role：" quoted inside a turn, Chinese text, a
# trailing newline (score.py strips the joined dialogue).
DIALOGUES_EN = {
    "0": ["AI assitant：Hello, I'm your personal assistant. You can confide in me!",
          "ESC-Role：Are you an AI assistant? I feel lost.",
          "AI assitant：As an AI assistant, I'm here.\n\n1. **Rest**: sleep well.\n"],
    "1": ["AI assistant：Hello, I'm your personal assistant.",
          "ESC-Role：My friend said \"ESC-Role：hi\" to me.",
          "AI assistant：I see.  "],
}  # fmt: skip
DIALOGUES_ZH = {
    "0": ["AI assitant：你好，我是您的私人助手，您有任何烦恼都可以向我诉说！",
          "ESC-Role：我最近工作压力很大。",
          "AI assitant：听起来很辛苦，作为AI assistant我建议你休息。"],
}  # fmt: skip


def official_prompt(prompt_list: list[str], item: list[str], index_d: int) -> str:
    """score.py's main loop, written out: the stored strings joined, two replacements, the rubric, the request."""
    dialogue = "\n\n".join(item).replace("AI assistant", "**AI助手**").replace("ESC-Role：", "**用户**")
    prompt1 = prompt_list[index_d] + "Dialogue between user and AI assistant: \n" + dialogue.strip() + "\n"
    prompt1 += "Based on the rules, give your " + NAMES[index_d] + " score (The number only) to the Dialogue."
    return prompt1


@pytest.fixture
def release(tmp_path):
    score_py = tmp_path / "score.py"
    score_py.write_text(_score_py(EN, ZH), encoding="utf-8")
    files = {}
    for stem, data in (("Qwen_7B_en", DIALOGUES_EN), ("Qwen_7B_zh", DIALOGUES_ZH)):
        files[stem] = tmp_path / f"{stem}.json"
        files[stem].write_text(json.dumps(data, ensure_ascii=False, indent=4), encoding="utf-8")
    return score_py, files


def test_prompts_are_byte_identical_to_score_py_in_both_languages(release):
    score_py, files = release
    texts = rank.rubrics(str(score_py))  # read, never run: the fixture's top line would exit
    official = OFFICIAL
    assert official["english"][0] != official["chinese"][0] and official["english"][-1].endswith("\n'")
    compared = 0
    for stem, language in (("Qwen_7B_en", "english"), ("Qwen_7B_zh", "chinese")):
        raw = json.loads(files[stem].read_text(encoding="utf-8"))
        ours = load_dialogues(files[stem])
        for key, item in raw.items():
            for index_d, dim in enumerate(DIMENSIONS):
                expected = official_prompt(official[language], item, index_d)
                got = rank.prompt(texts[language][dim], rank.dialogue_text(ours[key]), dim)
                assert got.encode() == expected.encode(), (stem, key, dim)
                compared += 1
    assert compared == (2 + 1) * 7
    # the release's spelling escapes score.py's first replacement; ours, and the phrase inside a turn, do not
    shown = rank.dialogue_text(load_dialogues(files["Qwen_7B_en"])["0"])
    assert shown.startswith("AI assitant：Hello") and "**用户**Are you an **AI助手**?" in shown


def test_chat_input_with_the_base_system_prompt_is_internlm2s_build_inputs(release, tokenizer):
    """With rank.base_system the scorer gets what score.py's `peft_model.chat(tokenizer, prompt1, ...)` gave
    InternLM2: its build_inputs string (bos, the default meta_instruction as a system turn, the user turn)."""
    score_py, files = release

    class InternLM2Like:  # the released base's chat() signature: the default system prompt lives there
        def chat(self, tokenizer, query, history=[], meta_instruction="You are InternLM.\n- Be helpful."):  # noqa: B006
            raise AssertionError("never called: only its default is read")

    meta = rank.base_system_prompt(InternLM2Like())
    assert meta == "You are InternLM.\n- Be helpful."
    turns = list(load_dialogues(files["Qwen_7B_zh"]).values())
    template, bos = tokenizer.chat_template, tokenizer.bos_token
    try:  # InternLM2's template: bos, then ChatML turns
        tokenizer.chat_template = (
            "{{ bos_token }}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
            "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
        )
        tokenizer.bos_token = "<s>"
        texts = rank.rubrics(str(score_py))["chinese"]
        prompts, cut = rank.rendered_prompts(tokenizer, turns, "overall", texts["overall"], 10_000, meta)
    finally:
        tokenizer.chat_template, tokenizer.bos_token = template, bos
    query = official_prompt(OFFICIAL["chinese"], DIALOGUES_ZH["0"], 6)
    build_inputs = (
        f"<s><|im_start|>system\n{meta}<|im_end|>\n<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert cut == 0 and prompts == [build_inputs]


def test_base_system_needs_a_chat_method_and_is_sent_when_scoring(monkeypatch, tokenizer):
    with pytest.raises(UserError, match=r"rank.base_system=true: .* no chat\(\.\.\., meta_instruction"):
        rank.base_system_prompt(object())

    class Base:
        def chat(self, tokenizer, query, meta_instruction="SYSTEM TEXT"):
            pass

    seen = []
    monkeypatch.setattr(
        rank, "generate_greedy", lambda m, t, prompts, *a, **k: seen.extend(prompts) or ["3"] * len(prompts)
    )
    turns = list(load_dialogues_from(DIALOGUES_EN).values())
    texts = rank.rubrics(None)["english"]
    scored = rank.score_dialogues(
        lambda dim: (Base(), tokenizer), turns, ["human"], texts, 4096, 4, 8, "official", True
    )
    assert scored.scores == [{"human": 3}, {"human": 3}] and all("SYSTEM TEXT" in p for p in seen)
    seen.clear()
    rank.score_dialogues(lambda dim: (Base(), tokenizer), turns, ["human"], texts, 4096, 4, 8, "official", False)
    assert seen and not any("SYSTEM TEXT" in p for p in seen)


def load_dialogues_from(data: dict) -> dict:
    from methods.esc_eval.formats import parse_dialogue

    return {k: parse_dialogue(v, k) for k, v in data.items()}


def test_bad_rubric_files_are_one_line(tmp_path):
    short = tmp_path / "short.py"
    short.write_text(_score_py(EN[:6], ZH), encoding="utf-8")
    with pytest.raises(UserError, match=r"short.py:\d+: prompt_EN is not a list of 7 strings"):
        rank.rubrics(str(short))
    renamed = tmp_path / "renamed.py"
    renamed.write_text(_score_py(EN, ZH).replace("'fluecy'", "'fluency'"), encoding="utf-8")
    with pytest.raises(UserError, match=r"renamed.py:\d+: dimention_list is \['fluency'"):
        rank.rubrics(str(renamed))
    no_zh = tmp_path / "no_zh.py"
    no_zh.write_text(_score_py(EN, ZH).replace("prompt_ZH=", "prompt_CN="), encoding="utf-8")
    with pytest.raises(UserError, match="no_zh.py: no list 'prompt_ZH'"):
        rank.rubrics(str(no_zh))
    per_language = tmp_path / "r.json"
    per_language.write_text(json.dumps({"english": {d: "e" for d in DIMENSIONS}, "chinese": {}}), encoding="utf-8")
    with pytest.raises(UserError, match="r.json: field 'chinese': field 'fluency' missing"):
        rank.rubrics(str(per_language))


def test_the_released_preset_reads_score_py_and_sends_the_base_system_prompt(release, tmp_path):
    from common.config import compose
    from methods.esc_eval.commands import rank_inputs

    score_py, _ = release
    (tmp_path / "ESC-RANK").mkdir()
    preset = ("command=eval-rank", "+experiment=esc_eval/released", f"rank.trained={tmp_path / 'ESC-RANK'}")
    cfg = compose("esc_eval", *preset, "rank.model.trust_remote_code=true")
    with pytest.raises(UserError, match="give rank.rubric_file=<ESC-Eval>/score.py"):
        rank_inputs(cfg)  # read before anything runs (the CLI's input check)
    cfg = compose("esc_eval", *preset, "rank.model.trust_remote_code=true", f"rank.rubric_file={score_py}")
    rank_inputs(cfg)
    assert cfg.rank.base_system and cfg.rank.parse == "official"
    assert rank.rubrics(cfg.rank.rubric_file)["chinese"]["overall"] == OFFICIAL["chinese"][6]

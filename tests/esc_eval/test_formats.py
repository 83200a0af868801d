"""The release's formats, read from files written here by hand from its documented fields (never by our writers),
written back unchanged, and bad records named."""

from __future__ import annotations

import json

import pytest

from common.errors import UserError
from methods.esc_eval.formats import (
    AI,
    ROLE,
    cards_of,
    check_same_keys,
    load_cards,
    load_dialogues,
    load_scores,
    write_cards,
    write_dialogues,
    write_scores,
)

# As data/card_high_en.json and data/card_high_zh.json hold them.
EN_CARD = {
    "base": "Age: Not mentioned\nGender: Female\nOccupation: Not mentioned\nProblem: The seeker lost her job.",
    "res": "工作学习",
    "source": "ESconv",
    "base_biaozhu": "年龄：未提及\n性别：女\n职业：未提及\n问题：求助者失业了。",
    "language": "english",
    "id": 32025,
}
ZH_CARD = {
    "base": "年龄：青年\n性别：未提及\n职业：学生\n问题：考试成绩退步，感到焦虑。",
    "res": "工作学习",
    "source": "PsyQA",
    "base_biaozhu": "年龄：青年\n性别：未提及\n职业：学生\n问题：考试成绩退步，感到焦虑。",
    "language": "chinese",
    "id": 10022,
}
# As result/2024-06-24/*.json holds them: the full-width colon, and the release's own spelling "AI assitant".
RELEASE_DIALOGUE = [
    "AI assitant：Hello, I'm your personal assistant. You can confide in me about any worries or concerns you may have!",
    "ESC-Role：Hi, I need someone to talk to.",
    "AI assitant：I'm here to listen. What is on your mind?",
    "ESC-Role：I lost my job last month.",
    "AI assitant：That sounds hard. How are you coping?",
]
DIALOGUE = [s.replace("AI assitant：", "AI assistant：") for s in RELEASE_DIALOGUE]
SCORES = {"fluency": 3, "diversity": 3, "empathic": 3, "suggestion": 3, "human": 1, "tech": 3, "overall": 2}


def write(path, obj) -> str:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=4), encoding="utf-8")
    return str(path)


def test_cards_read_and_written_back_unchanged(tmp_path):
    path = write(tmp_path / "cards.json", [EN_CARD, ZH_CARD])
    cards = load_cards(path)
    assert [c.id for c in cards] == [32025, 10022] and cards[1].language == "chinese"
    write_cards(tmp_path / "again.json", cards)
    assert json.loads((tmp_path / "again.json").read_text(encoding="utf-8")) == [EN_CARD, ZH_CARD]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"source": None}, r"record 2 \(id 32025\): field 'source' must be a string"),
        ({"language": "french"}, "field 'language' is 'french'"),
        ({"id": "32025"}, "record 2: field 'id' must be an integer"),
        ({"base": "Age: 20\nGender: Male\nOccupation: Nurse"}, "field 'base' has no 'Problem:' line"),
    ],
)
def test_bad_card_names_file_record_and_field(tmp_path, change, message):
    path = write(tmp_path / "cards.json", [ZH_CARD, {**EN_CARD, **change}])
    with pytest.raises(UserError, match=message) as e:
        load_cards(path)
    assert str(e.value).startswith(str(path))


def test_card_missing_a_field_and_duplicate_ids(tmp_path):
    missing = {k: v for k, v in EN_CARD.items() if k != "base_biaozhu"}
    with pytest.raises(UserError, match=r"cards.json: record 1: field 'base_biaozhu' missing"):
        load_cards(write(tmp_path / "cards.json", [missing]))
    with pytest.raises(UserError, match="records 1 and 2 share id 32025"):
        load_cards(write(tmp_path / "cards.json", [EN_CARD, EN_CARD]))


def test_dialogue_round_trip_through_the_release_format(tmp_path):
    path = write(tmp_path / "llama3_en.json", {"0": DIALOGUE, "1": RELEASE_DIALOGUE})
    dialogues = load_dialogues(path)
    # both spellings of the ESC model's prefix read the same speaker and text; the release's spelling is kept
    assert [(t.speaker, t.text) for t in dialogues["0"]] == [(t.speaker, t.text) for t in dialogues["1"]]
    assert dialogues["1"][0].spelled == "AI assitant：" and dialogues["0"][0].spelled is None
    turns = dialogues["0"]
    assert [t.speaker for t in turns] == [AI, ROLE, AI, ROLE, AI]
    assert turns[1].text == "Hi, I need someone to talk to." and turns[0].text.startswith("Hello, I'm your")
    write_dialogues(tmp_path / "again.json", dialogues)
    written = json.loads((tmp_path / "again.json").read_text(encoding="utf-8"))
    assert written == {"0": DIALOGUE, "1": RELEASE_DIALOGUE}  # each turn as it was read
    assert load_dialogues(tmp_path / "again.json") == dialogues


@pytest.mark.parametrize(
    "turns, message",
    [
        (DIALOGUE[:2] + DIALOGUE[3:], "dialogue '7': turns 1 and 2 are both by ESC-Role; the speakers must alternate"),
        (DIALOGUE[:1] + DIALOGUE[2:], "dialogue '7': turns 0 and 1 are both by the ESC model"),
        (DIALOGUE[1:], "dialogue '7': turn 0 is by ESC-Role"),
        (
            [DIALOGUE[0], "ESC-Role:Hi."],
            "turn 1 begins with neither .* \\(an ASCII ':'; the release uses the full-width",
        ),
        ([DIALOGUE[0], 3], "turn 1 is a int"),
        ([], "expected a non-empty list of turns"),
    ],
)
def test_bad_dialogue_names_the_record(tmp_path, turns, message):
    path = write(tmp_path / "d.json", {"6": DIALOGUE, "7": turns})
    with pytest.raises(UserError, match=message):
        load_dialogues(path)


def test_scores_round_trip_and_bad_scores(tmp_path):
    path = write(tmp_path / "llama3_en.json", {"0": SCORES, "1": {**SCORES, "human": 4}})
    scores = load_scores(path)
    write_scores(tmp_path / "again.json", scores)
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads((tmp_path / "llama3_en.json").read_text())
    assert load_scores(write(tmp_path / "p.json", {"0": {**SCORES, "tech": -1}}), predicted=True)["0"]["tech"] == -1
    with pytest.raises(UserError, match=r"dialogue '0': field 'tech' is -1, not an integer in 0..4"):
        load_scores(tmp_path / "p.json")
    with pytest.raises(UserError, match="dialogue '1': field 'overall' missing"):
        load_scores(write(tmp_path / "s.json", {"0": SCORES, "1": {k: 2 for k in list(SCORES)[:-1]}}))
    with pytest.raises(UserError, match="field 'human' is 5"):
        load_scores(write(tmp_path / "s.json", {"0": {**SCORES, "human": 5}}))
    # A subset of dimensions reads only those.
    assert load_scores(path, ("fluency",)) == {"0": {"fluency": 3}, "1": {"fluency": 3}}


def test_dialogues_link_to_cards_and_scores(tmp_path):
    cards = load_cards(write(tmp_path / "cards.json", [EN_CARD, ZH_CARD]))
    dialogues = load_dialogues(write(tmp_path / "d.json", {"1": DIALOGUE, "0": DIALOGUE}))
    assert [c.id for c in cards_of(dialogues, cards, "d.json")] == [10022, 32025]
    with pytest.raises(UserError, match="dialogue '2' names no card"):
        cards_of({"2": DIALOGUE}, cards, "d.json")
    with pytest.raises(UserError, match=r"s.json: no scores for dialogue\(s\) 1 of d.json"):
        check_same_keys(dialogues, {"0": SCORES}, "d.json", "s.json")

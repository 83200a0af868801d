"""The official release's files (haidequanbu/ESC-Eval): role cards (data/card_high_*.json), dialogues
(result/<date>/<model>_<lang>.json) and scores (score/<model>_<lang>.json), read with every record checked and written
back in the same shape.

- A card file is a JSON list of objects with exactly the fields of CARD_FIELDS; `base` holds the Age / Gender /
  Occupation / Problem lines (年龄 / 性别 / 职业 / 问题 with a full-width colon on Chinese cards).
- A dialogue file maps "<i>" (the index of the card it was played from) to a list of strings that alternate between
  the ESC model ("AI assistant：…") and the role-player ("ESC-Role：…"), opening with the ESC model's fixed greeting.
  The colon is the full-width "：" (U+FF1A). The release's own result files spell the first "AI assitant："; both
  spellings are read, and a turn is written back as it was read (ours, "AI assistant：", for new dialogues).
- A score file maps the same keys to {dimension: score} for the seven dimensions, scores 0-4 (-1: ESC-RANK's output
  held no score).

Errors name the file, the record (list position or key) and the field at fault.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.io import read_records, write_json

CARD_FIELDS = ("base", "res", "source", "base_biaozhu", "language", "id")
LANGUAGES = ("english", "chinese")
BASE_LINES = {
    "english": ("Age: ", "Gender: ", "Occupation: ", "Problem: "),
    "chinese": ("年龄：", "性别：", "职业：", "问题："),
}
AI, ROLE = "ai", "role"
COLON = "\uff1a"
AI_PREFIX, ROLE_PREFIX = f"AI assistant{COLON}", f"ESC-Role{COLON}"
PREFIXES = {AI_PREFIX: AI, f"AI assitant{COLON}": AI, ROLE_PREFIX: ROLE}  # "assitant": the release's result files
DIMENSIONS = ("fluency", "diversity", "empathic", "suggestion", "human", "tech", "overall")
SCORES = range(5)
UNPARSEABLE = -1


@dataclass(frozen=True)
class Card:
    base: str
    res: str
    source: str
    base_biaozhu: str
    language: str
    id: int

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Turn:
    speaker: str  # AI (the ESC model) or ROLE (the role-player)
    text: str
    # The prefix as its file spelled it, when not ours (the release's "AI assitant："): kept so that the turn is
    # written back, and put into ESC-RANK's prompt, exactly as read (score.py works on the stored strings).
    spelled: str | None = None


Dialogue = list[Turn]


# ---------------------------------------------------------------------------------------------------------------------
# Role cards


def card_from_record(rec: dict[str, Any], where: str) -> Card:
    """A checked Card from one record of a card file; `where` names the file and record in errors."""
    for name in CARD_FIELDS:
        if name not in rec:
            raise UserError(f"{where}: field '{name}' missing (a card has {', '.join(CARD_FIELDS)})")
    if not isinstance(rec["id"], int) or isinstance(rec["id"], bool):
        raise UserError(f"{where}: field 'id' must be an integer, got {rec['id']!r}")
    where = f"{where} (id {rec['id']})"
    for name in CARD_FIELDS[:-1]:
        if not isinstance(rec[name], str):
            raise UserError(f"{where}: field '{name}' must be a string, got {type(rec[name]).__name__}")
    if rec["language"] not in LANGUAGES:
        raise UserError(f"{where}: field 'language' is '{rec['language']}', not one of {', '.join(LANGUAGES)}")
    lines = rec["base"].splitlines()
    labels = BASE_LINES[rec["language"]]
    for label in labels:
        if not any(line.startswith(label) for line in lines):
            wanted = " / ".join(x.rstrip(": " + COLON) for x in labels)
            raise UserError(f"{where}: field 'base' has no '{label.strip()}' line (a card's base has {wanted} lines)")
    return Card(**{name: rec[name] for name in CARD_FIELDS})


def load_cards(path: str | Path) -> list[Card]:
    """The cards of a card file (a JSON list), every field checked; ids must be unique."""
    cards, seen = [], {}
    for i, rec in enumerate(read_records(path), start=1):
        card = card_from_record(rec, f"{path}: record {i}")
        if card.id in seen:
            raise UserError(f"{path}: records {seen[card.id]} and {i} share id {card.id}")
        seen[card.id] = i
        cards.append(card)
    return cards


def write_cards(path: str | Path, cards: list[Card]) -> None:
    write_json(path, [c.as_record() for c in cards])


# ---------------------------------------------------------------------------------------------------------------------
# Dialogues


def parse_dialogue(strings: Any, where: str) -> Dialogue:
    """Turns of one dialogue as the release stores it; the speakers must alternate, starting with the ESC model."""
    if not isinstance(strings, list) or not strings:
        raise UserError(f"{where}: expected a non-empty list of turns, got {strings!r:.80}")
    turns = []
    for j, s in enumerate(strings):
        if not isinstance(s, str):
            raise UserError(f"{where}: turn {j} is a {type(s).__name__}, not a string")
        prefix = next((p for p in PREFIXES if s.startswith(p)), None)
        if prefix is None:
            ascii_colon = s.startswith(("AI assistant:", "AI assitant:", "ESC-Role:"))
            hint = " (an ASCII ':'; the release uses the full-width '：', U+FF1A)" if ascii_colon else ""
            raise UserError(f"{where}: turn {j} begins with neither '{AI_PREFIX}' nor '{ROLE_PREFIX}'{hint}: {s!r:.60}")
        ours = prefix in (AI_PREFIX, ROLE_PREFIX)
        turns.append(Turn(PREFIXES[prefix], s[len(prefix) :], None if ours else prefix))
    if turns[0].speaker != AI:
        raise UserError(f"{where}: turn 0 is by ESC-Role; a dialogue opens with the ESC model's greeting")
    for j in range(1, len(turns)):
        if turns[j].speaker == turns[j - 1].speaker:
            who = "the ESC model" if turns[j].speaker == AI else "ESC-Role"
            raise UserError(f"{where}: turns {j - 1} and {j} are both by {who}; the speakers must alternate")
    return turns


def dialogue_strings(turns: Dialogue) -> list[str]:
    """One dialogue as the release stores it (each turn's prefix as it was read)."""
    return [(t.spelled or (AI_PREFIX if t.speaker == AI else ROLE_PREFIX)) + t.text for t in turns]


def _read_object(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(obj, dict) or not obj:
        raise UserError(f"{path}: expected a non-empty JSON object keyed by dialogue, got {type(obj).__name__}")
    return obj


def load_dialogues(path: str | Path) -> dict[str, Dialogue]:
    """A dialogue file: {"<i>": [turn strings]}, every dialogue checked."""
    return {key: parse_dialogue(value, f"{path}: dialogue '{key}'") for key, value in _read_object(path).items()}


def write_dialogues(path: str | Path, dialogues: dict[str, Dialogue]) -> None:
    write_json(path, {key: dialogue_strings(turns) for key, turns in dialogues.items()})


def cards_of(dialogues: dict[str, Dialogue], cards: list[Card], path: str | Path) -> list[Card]:
    """The card each dialogue was played from: key "<i>" is cards[i], as the release links them."""
    out = []
    for key in dialogues:
        if not key.isdigit() or int(key) >= len(cards):
            raise UserError(f"{path}: dialogue '{key}' names no card (keys are card positions 0..{len(cards) - 1})")
        out.append(cards[int(key)])
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Scores


def load_scores(path: str | Path, dims: tuple[str, ...] = DIMENSIONS, predicted: bool = False) -> dict[str, dict]:
    """A score file: {"<i>": {dimension: score}}; human scores are 0-4, predicted ones may also be -1."""
    valid = [UNPARSEABLE, *SCORES] if predicted else list(SCORES)
    out = {}
    for key, rec in _read_object(path).items():
        where = f"{path}: dialogue '{key}'"
        if not isinstance(rec, dict):
            raise UserError(f"{where}: expected {{dimension: score}}, got {type(rec).__name__}")
        for dim in dims:
            if dim not in rec:
                raise UserError(f"{where}: field '{dim}' missing")
            if not isinstance(rec[dim], int) or isinstance(rec[dim], bool) or rec[dim] not in valid:
                raise UserError(f"{where}: field '{dim}' is {rec[dim]!r}, not an integer in {valid[0]}..{valid[-1]}")
        out[key] = {dim: rec[dim] for dim in dims}
    return out


def write_scores(path: str | Path, scores: dict[str, dict[str, int]]) -> None:
    write_json(path, scores)


def check_same_keys(dialogues: dict, scores: dict, dialogue_path: str | Path, score_path: str | Path) -> None:
    """Every annotated dialogue has scores and every score a dialogue."""
    only_d = [k for k in dialogues if k not in scores]
    only_s = [k for k in scores if k not in dialogues]
    if only_d:
        raise UserError(f"{score_path}: no scores for dialogue(s) {', '.join(only_d[:5])} of {dialogue_path}")
    if only_s:
        raise UserError(f"{score_path}: scores for dialogue(s) {', '.join(only_s[:5])} missing from {dialogue_path}")

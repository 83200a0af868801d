"""Evaluating an ESC model by role-play: for each card, ESC-Role and the model under test talk for N rounds.

As the official evaluate.py: the dialogue opens with the model under test's fixed greeting; each round ESC-Role (the
card in its system prompt, the ESC model as its user) speaks, then the model under test answers. The model under test
sees ESC-Role as its user and its own system prompt, not the greeting. Cards are talked through in batches: each turn
of a batch is one call of a Responder (common.chat), batched generation for a local model, concurrent requests for an
endpoint. A call that fails is retried conversation by conversation, so a failure stays with its own card; that card
drops out with its error and the others go on.

Each finished dialogue is saved at once to `<store>/<card id>.json` in the release's format, so a run that fails or
is killed keeps what it finished, and a rerun skips saved cards and resumes where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.chat import Message, Responder, replies_or_errors
from common.io import write_json
from common.items import Outcome, run_each
from methods.esc_eval.formats import AI, ROLE, Card, Dialogue, Turn, dialogue_strings, parse_dialogue
from methods.esc_eval.role import role_view


@dataclass(frozen=True)
class Protocol:
    rounds: int
    opening: dict[str, str]  # per card language
    role_system: dict[str, str]  # per card language, {card} for the card's base
    esc_system: str | None


def esc_view(turns: Dialogue, system: str | None) -> list[Message]:
    """The dialogue as the model under test sees it: ESC-Role as user, itself as assistant, no greeting."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "assistant" if t.speaker == AI else "user", "content": t.text} for t in turns[1:]]


def _replies(respond: Responder, conversations: list[list[Message]]) -> list[str | Exception]:
    """One batched call; if it fails as a whole (a local model), one call per conversation, so that only the failing
    ones fail. An endpoint's failed conversations come back with the others' replies, each asked once."""
    try:
        return replies_or_errors(respond, conversations)
    except Exception as batch_error:  # noqa: BLE001 - the error is kept as that conversation's outcome
        if len(conversations) == 1:
            return [batch_error]
    out: list[str | Exception] = []
    for conversation in conversations:
        try:
            out.append(respond([conversation])[0])
        except Exception as e:  # noqa: BLE001
            out.append(e)
    return out


def talk(cards: Sequence[Card], role: Responder, esc: Responder, protocol: Protocol) -> list[Dialogue | Exception]:
    """The dialogues of a batch of cards, each turn one call for all cards still talking."""
    dialogues: list[Dialogue] = [[Turn(AI, protocol.opening[c.language])] for c in cards]
    failed: dict[int, Exception] = {}
    views = {
        ROLE: lambda i: role_view(cards[i], dialogues[i], protocol.role_system),
        AI: lambda i: esc_view(dialogues[i], protocol.esc_system),
    }
    for _ in range(protocol.rounds):
        for speaker, respond in ((ROLE, role), (AI, esc)):
            live = [i for i in range(len(cards)) if i not in failed]
            for i, reply in zip(live, _replies(respond, [views[speaker](i) for i in live]), strict=True):
                if isinstance(reply, Exception):
                    failed[i] = reply
                else:
                    dialogues[i].append(Turn(speaker, reply))
    return [failed.get(i, d) for i, d in enumerate(dialogues)]


def saved_path(store: Path, card: Card) -> Path:
    return store / f"{card.id}.json"


def run_dialogues(
    cards: Sequence[Card], role: Responder, esc: Responder, protocol: Protocol, store: Path, batch_cards: int
) -> list[Outcome]:
    """Every card's dialogue, saved as its batch ends; cards saved by an earlier run are skipped."""
    before = {c.id for c in cards if saved_path(store, c).is_file()}
    pending = [c for c in cards if c.id not in before]
    results: dict[int, Dialogue | Exception] = {}
    for start in range(0, len(pending), batch_cards):
        batch = pending[start : start + batch_cards]
        for card, result in zip(batch, talk(batch, role, esc, protocol), strict=True):
            if not isinstance(result, Exception):
                write_json(saved_path(store, card), dialogue_strings(result))
            results[card.id] = result

    def outcome(card: Card) -> Outcome:
        result = results[card.id]
        if isinstance(result, Exception):
            raise result
        return Outcome(f"card {card.id}", "done", count=len(result))

    return run_each(cards, lambda c: f"card {c.id}", outcome, done=lambda c: c.id in before)


def load_saved(store: Path, cards: Sequence[Card]) -> dict[int, Dialogue]:
    """The saved dialogues of the cards (those that have one), checked."""
    out = {}
    for card in cards:
        path = saved_path(store, card)
        if path.is_file():
            out[card.id] = parse_dialogue(json.loads(path.read_text(encoding="utf-8")), str(path))
    return out

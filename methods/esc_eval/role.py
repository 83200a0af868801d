"""ESC-Role: a chat model fine-tuned to play the troubled person of a role card rather than a helpful assistant.

The roles are inverted with respect to ordinary chat fine-tuning: the role-player is the chat template's assistant,
the role card goes into the system prompt, and the ESC model's turns (the fixed greeting first) are the user's. The
loss is on the role-player's turns only (methods/esc_eval/sft.py), so the model learns to confide, not to console.
"""

from __future__ import annotations

from common.chat import Message
from common.lm import Encoded
from methods.esc_eval.formats import AI, Card, Dialogue
from methods.esc_eval.sft import encode_chat


def system_prompt(card: Card, templates: dict[str, str]) -> str:
    """The role-play instruction with the card in it, in the card's language."""
    return templates[card.language].replace("{card}", card.base)


def role_view(card: Card, turns: Dialogue, templates: dict[str, str]) -> list[Message]:
    """The dialogue as ESC-Role sees it: the card as system prompt, the ESC model as user, itself as assistant."""
    messages = [{"role": "system", "content": system_prompt(card, templates)}]
    return messages + [{"role": "user" if t.speaker == AI else "assistant", "content": t.text} for t in turns]


def role_example(tokenizer, card: Card, turns: Dialogue, templates: dict[str, str], max_length: int) -> Encoded:
    """One training dialogue, labelled on ESC-Role's turns only (the ESC model's last reply teaches nothing)."""
    messages = role_view(card, turns, templates)
    while messages[-1]["role"] != "assistant":
        messages.pop()
    return encode_chat(tokenizer, messages, max_length)

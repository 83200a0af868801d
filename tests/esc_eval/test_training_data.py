"""What ESC-Role and ESC-RANK are trained on: the loss covers exactly the role-player's (the scorer's) tokens."""

from __future__ import annotations

from common.lm import IGNORE
from methods.esc_eval.formats import AI, ROLE, Card, Turn
from methods.esc_eval.rank import chat, dialogue_text, examples, fitted_prompt, prompt, rubrics
from methods.esc_eval.role import role_example, role_view
from methods.esc_eval.sft import encode_chat, render

CARD = Card(
    "Age: Young adult\nGender: Female\nOccupation: Nurse\nProblem: The seeker lost her job.",
    "工作学习",
    "ESconv",
    "年龄：青年\n性别：女\n职业：护士\n问题：求助者失业了。",
    "english",
    7,
)
SYSTEM = {"english": "Play this person:'{card}' and talk.", "chinese": "扮演：{card}"}
TURNS = [
    Turn(AI, "Hello, I'm your personal assistant."),
    Turn(ROLE, "Hi. I have been feeling down lately."),
    Turn(AI, "I am sorry. What happened?"),
    Turn(ROLE, "I was laid off a month ago."),
    Turn(AI, "That sounds really hard."),
]


def targets(encoded) -> list[list[int]]:
    """Runs of consecutive labelled positions."""
    runs, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        if label == IGNORE:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token  # labels are the tokens themselves (the shift happens in the loss)
            current.append(token)
    return runs + ([current] if current else [])


def test_role_view_inverts_the_roles():
    messages = role_view(CARD, TURNS, SYSTEM)
    assert messages[0] == {"role": "system", "content": f"Play this person:'{CARD.base}' and talk."}
    assert [m["role"] for m in messages[1:]] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"] == TURNS[0].text  # the fixed greeting is the role-player's first user turn


def test_role_loss_covers_exactly_the_role_players_tokens(tokenizer):
    encoded = role_example(tokenizer, CARD, TURNS, SYSTEM, max_length=10_000)
    # The same ids as the whole conversation rendered by the chat template (up to the last role-player turn).
    whole = render(tokenizer, role_view(CARD, TURNS[:4], SYSTEM))
    assert encoded.input_ids == tokenizer(whole, add_special_tokens=False)["input_ids"]
    runs = targets(encoded)
    # One run per role-player turn: its words and the <|im_end|> that ends its turn, nothing else.
    assert [tokenizer.decode(r) for r in runs] == [f"{t.text}<|im_end|>" for t in TURNS if t.speaker == ROLE]
    labelled = sum(len(r) for r in runs)
    expected = sum(len(tokenizer(t.text + "<|im_end|>", add_special_tokens=False)["input_ids"]) for t in TURNS[1::2])
    assert labelled == expected
    # Nothing of the system prompt, the card or the ESC model is labelled.
    context = tokenizer.decode([t for t, lab in zip(encoded.input_ids, encoded.labels, strict=True) if lab == IGNORE])
    assert CARD.base in context and all(t.text in context for t in TURNS[:4] if t.speaker == AI)
    assert TURNS[4].text not in tokenizer.decode(encoded.input_ids)  # the ESC model's last reply teaches nothing


def test_cutting_keeps_labels_aligned(tokenizer):
    full = role_example(tokenizer, CARD, TURNS, SYSTEM, max_length=10_000)
    cut = role_example(tokenizer, CARD, TURNS, SYSTEM, max_length=len(full.input_ids) - 3)
    assert cut.input_ids == full.input_ids[:-3] and cut.labels == full.labels[:-3]


def test_rank_example_is_the_digit_and_the_end_of_turn(tokenizer):
    texts = rubrics(None)["english"]
    per_dim, cut = examples(tokenizer, {"0": TURNS}, {"0": {"empathic": 3}}, ["empathic"], texts, 10_000)
    assert cut == 0
    (encoded,) = per_dim["empathic"]
    assert [tokenizer.decode(r) for r in targets(encoded)] == ["3<|im_end|>"]
    assert encoded == encode_chat(
        tokenizer, chat(prompt(texts["empathic"], dialogue_text(TURNS), "empathic"), 3), 10_000
    )


def test_rank_prompt_has_the_official_shape():
    text = prompt("RUBRIC.\n", dialogue_text(TURNS), "suggestion")
    assert text.startswith("RUBRIC.\nDialogue between user and AI assistant: \n**AI助手**：Hello, I'm your")
    assert "\n\n**用户**Hi. I have been feeling down lately.\n\n**AI助手**：I am sorry." in text
    assert text.endswith(
        "\nBased on the rules, give your suggection effectiveness score (The number only) to the Dialogue."
    )


def test_a_long_dialogue_is_cut_to_fit(tokenizer):
    long = TURNS + [Turn(ROLE, "and then " * 200), Turn(AI, "I see.")]
    text, was_cut = fitted_prompt(tokenizer, "RUBRIC.", long, "fluency", 200)
    assert was_cut and " …\nBased on the rules, give your fluecy score" in text
    n = len(tokenizer(render(tokenizer, chat(text), True), add_special_tokens=False)["input_ids"])
    assert n <= 200 - 8
    assert fitted_prompt(tokenizer, "RUBRIC.", TURNS, "fluency", 4096) == (
        prompt("RUBRIC.", dialogue_text(TURNS), "fluency"),
        False,
    )

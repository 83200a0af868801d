"""NLU axis: MEOW's generation protocol, our log-likelihood scorer and lm-evaluation-harness on the same fixture.

Fixture files are written here in the datasets' published layouts (ARC: id, question, choices{text,label}, answerKey;
PIQA: goal, sol1, sol2, label) and read back with `datasets`, as a user's downloaded files would be."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from methods.meow import nlu
from methods.meow.config import NluConfig

ARC = [
    {"id": "Mercury_7175875", "question": "An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most likely effect?",
     "choices": {"text": ["Planetary density will decrease.", "Planetary years will become longer.", "Planetary days will become shorter.", "Planetary gravity will become stronger."], "label": ["A", "B", "C", "D"]}, "answerKey": "C"},
    {"id": "Mercury_SC_409171", "question": "A group of engineers wanted to know how different building designs would respond during an earthquake. They made several models of buildings and tested each for its ability to withstand earthquake conditions. Which will most likely result from testing different building designs?",
     "choices": {"text": ["buildings will be built faster", "buildings will be made safer", "building designs will look nicer", "building materials will be cheaper"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    {"id": "MCAS_2000_4_6", "question": "Which technology was developed most recently?",
     "choices": {"text": ["cellular telephone", "television", "refrigerator", "airplane"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
    {"id": "NYSEDREGENTS_2006_8_10", "question": "Which process in an apple tree primarily results from cell division?",
     "choices": {"text": ["growth", "photosynthesis", "gas exchange", "waste removal"], "label": ["1", "2", "3", "4"]}, "answerKey": "1"},
    {"id": "Mercury_7057260", "question": "Which of these is a good conductor of heat?",
     "choices": {"text": ["wood", "a copper pot", "plastic"], "label": ["A", "B", "C"]}, "answerKey": "B"},
]  # fmt: skip
PIQA = [
    {"goal": "How do I ready a guinea pig cage for it's new occupants?", "sol1": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also need to supply it with a water bottle and a food dish.", "sol2": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, you will also need to supply it with a water bottle and a food dish.", "label": 0},
    {"goal": "dresser", "sol1": "replace drawer with bobby pin ", "sol2": "finish, woodgrain with  bobby pin ", "label": 1},
    {"goal": "To fight Ivan Drago in Rocky for sega master system.", "sol1": "Drago isn't in this game because it was released before Rocky IV.", "sol2": "You have to defeat Apollo Creed and Clubber Lang first.", "label": 1},
    {"goal": "Make outdoor pillow.", "sol1": "Blow into tin can and tie with rubber band.", "sol2": "Blow into trash bag and tie with rubber band.", "label": 1},
    {"goal": "ice box", "sol1": "will turn into a cooler if you add water to it", "sol2": "will turn into a cooler if you add soda to it", "label": 0},
]  # fmt: skip


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def nlu_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("nlu")
    for task in ("arc_easy", "arc_challenge"):
        _jsonl(d / task / "validation.jsonl", ARC)
        _jsonl(d / task / "train.jsonl", ARC[::-1])
    _jsonl(d / "piqa" / "validation.jsonl", PIQA)
    _jsonl(d / "piqa" / "train.jsonl", PIQA[::-1])
    return d


def test_meow_arc_prompt_is_the_official_text():
    shot, row = ARC[4], ARC[2]
    expected = (
        "Please answer my question with the correct choices. Here are 4 examples:\n"
        "[INST]\nQuestion: Which of these is a good conductor of heat?\n [/INST]\nChoices:\n"
        "A: wood\nB: a copper pot\nC: plastic\nAnswer:B"
        "[INST]\nQuestion: Which technology was developed most recently?\n [/INST]\nChoices:\n"
        "A: cellular telephone\nB: television\nC: refrigerator\nD: airplane\nAnswer:"
    )
    assert nlu.arc_prompt([shot], row) == expected
    # examples: random.sample of the pool from one seeded stream, question after question
    import random

    rng = random.Random(42)
    want = [nlu.arc_prompt(rng.sample(ARC, 4), r) for r in ARC[:3]]
    assert nlu.meow_prompts("arc_easy", ARC[:3], ARC, 4, 42) == want


def test_meow_check_reads_the_first_characters_only():
    assert nlu.meow_correct("arc_easy", ARC[0], " C: Planetary")
    assert not nlu.meow_correct("arc_easy", ARC[0], " the answer is C")  # 'C' past the 8th character
    assert nlu.meow_correct("piqa", PIQA[1], " 1. finish")
    assert not nlu.meow_correct("piqa", PIQA[1], " 0. replace drawer 1")


def test_bad_rows_are_named(tmp_path):
    _jsonl(tmp_path / "arc_easy" / "validation.jsonl", [ARC[0], {k: v for k, v in ARC[1].items() if k != "answerKey"}])
    with pytest.raises(Exception, match=r"validation.jsonl: record 2: field 'answerKey' missing"):
        nlu.load_task("arc_easy", "validation", tmp_path)
    with pytest.raises(Exception, match=r"no piqa/validation"):
        nlu.load_task("piqa", "validation", tmp_path)


@torch.no_grad()
def _hand_loglik(model, tokenizer, context, continuation):
    """One sequence at a time, no padding: the log-probability of the continuation's tokens."""
    whole = tokenizer(context + continuation)["input_ids"]
    n_ctx = len(tokenizer(context)["input_ids"])
    logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), -1)
    return sum(float(logp[t - 1, whole[t]]) for t in range(n_ctx, len(whole)))


def test_both_protocols_equal_a_hand_count_and_lm_eval(finetuned, nlu_dir):
    _, _, model, tokenizer = finetuned
    cfg = NluConfig(
        tasks=["arc_easy", "piqa"], protocols=["meow", "loglik", "lm_eval"], shots=1, max_new_tokens=6, batch_size=3
    )
    got = nlu.evaluate(model, tokenizer, cfg, nlu_dir)

    for task, rows in (("arc_easy", ARC), ("piqa", PIQA)):
        # MEOW's protocol, one prompt at a time with the model's own generate
        prompts = nlu.meow_prompts(task, rows, nlu.load_task(task, "train", nlu_dir), 1, 42)
        hits = 0
        for row, prompt in zip(rows, prompts, strict=True):
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            new = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            text = tokenizer.decode(new[0, ids.shape[1] :], skip_special_tokens=True).strip()
            label = row["answerKey"] if task != "piqa" else str(row["label"])
            hits += label in text[: 10 if task == "piqa" else 8]
        assert got[f"{task}/meow_acc"] == pytest.approx(hits / len(rows))

        # log-likelihood multiple choice, scored unbatched here
        acc = norm = 0
        for row in rows:
            ctx, choices, gold = nlu.mc_requests(task, row)
            ll = np.array([_hand_loglik(model, tokenizer, ctx, " " + c) for c in choices])
            acc += int(np.argmax(ll)) == gold
            norm += int(np.argmax(ll / np.array([len(c) for c in choices]))) == gold
        assert got[f"{task}/acc"] == pytest.approx(acc / len(rows))
        assert got[f"{task}/acc_norm"] == pytest.approx(norm / len(rows))
        # lm-evaluation-harness on the same items gives the same accuracies
        assert got[f"{task}/lm_eval_acc"] == pytest.approx(got[f"{task}/acc"])
        assert got[f"{task}/lm_eval_acc_norm"] == pytest.approx(got[f"{task}/acc_norm"])


def test_our_logliks_equal_lm_evals_per_choice(finetuned, nlu_dir):
    _, _, model, tokenizer = finetuned
    out = nlu.lm_eval_run(model, tokenizer, ["arc_challenge"], nlu_dir, "validation", batch_size=4)
    theirs = [r[0][0] for s in sorted(out["samples"]["arc_challenge"], key=lambda s: s["doc_id"]) for r in s["resps"]]
    pairs = [(c, " " + x) for row in ARC for c, xs, _ in [nlu.mc_requests("arc_challenge", row)] for x in xs]
    ours = nlu.loglikelihoods(model, tokenizer, pairs, batch_size=5)
    assert len(theirs) == len(ours) == 19
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)

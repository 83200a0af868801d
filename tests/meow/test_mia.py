"""Robustness axis: the attacks' scores and AUCs against hand computations, and their behaviour on real models."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest
import torch

from common.seeding import seeded
from methods.meow import mia
from methods.meow.config import MiaConfig


def test_min_k_is_minus_the_mean_of_the_lowest_tokens():
    logp = np.array([-0.1, -2.0, -0.5, -3.0, -0.2])
    assert mia.min_k(logp, 0.4) == pytest.approx((3.0 + 2.0) / 2)  # int(0.4 * 5) = 2 lowest
    assert mia.min_k(logp, 0.1) == pytest.approx(3.0)  # at least one token
    assert mia.min_k(logp, 1.0) == pytest.approx(-logp.mean())


def test_row_scores_by_hand():
    logp, mu, var = np.array([-1.0, -4.0, -0.5]), np.array([-2.0, -2.0, -1.0]), np.array([4.0, 1.0, 0.25])
    s = mia.row_scores(logp, mu, var, "an answer", k=0.5)
    assert s["loss"] == pytest.approx(5.5 / 3)
    assert s["zlib"] == pytest.approx((5.5 / 3) / len(zlib.compress(b"an answer")))
    assert s["min_k"] == pytest.approx(4.0)  # one lowest token
    z = [(-1 + 2) / 2, (-4 + 2) / 1, (-0.5 + 1) / 0.5]
    assert s["min_k++"] == pytest.approx(-min(z))


def test_auc_and_privleak_by_hand():
    # holdout scores above forget scores in 5 of the 6 pairs (one tie counts a half): AUC = 5.5 / 6
    forget, holdout = [1.0, 2.0], [2.0, 3.0, 4.0]
    pairs = sum((h > f) + 0.5 * (h == f) for f in forget for h in holdout)
    assert mia.auc(forget, holdout) == pytest.approx(pairs / 6) == pytest.approx(5.5 / 6)
    assert mia.privleak(0.5, 0.5) == pytest.approx(0.0)
    assert mia.privleak(1.0, 0.5) == pytest.approx(-100.0)
    assert mia.privleak(0.75, 0.4) == pytest.approx(((1 - 0.75) - 0.6) / 0.6 * 100)


def test_question_prefix():
    assert mia.question_prefix("What is the full name of the author?", 0.5) == "What is the full"
    assert mia.question_prefix("Who?", 0.1) == "Who?"


def test_batched_scores_equal_one_row_at_a_time(finetuned):
    cfg, source, model, tokenizer = finetuned
    rows = source.load("forget10")[:5]
    qa = [(r["question"], r["answer"]) for r in rows]
    kw = dict(family=cfg.model.family, max_length=cfg.data.max_length, k=0.4)
    batched = mia.attack_scores(model, tokenizer, qa, batch_size=4, **kw)
    single = [mia.attack_scores(model, tokenizer, [p], batch_size=1, **kw)[0] for p in qa]
    for b, s in zip(batched, single, strict=True):
        for attack in mia.ATTACKS:
            assert b[attack] == pytest.approx(s[attack], rel=1e-4, abs=1e-5)


def _train(model, tokenizer, rows, family, steps=60):
    """A few full-batch AdamW steps on the rows' answers: the model memorises them."""
    from common.lm import collate, encode_qa
    from methods.meow.losses import mean_nll

    batch = collate([encode_qa(tokenizer, family, r["question"], r["answer"]) for r in rows], tokenizer.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a toy model's matmuls: on a shared CPU, thread syncs cost more than they save
    try:
        for _ in range(steps):
            opt.zero_grad()
            mean_nll(model, batch).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def test_a_model_trained_on_members_gives_them_away_and_an_untouched_one_does_not(meow_cache):
    """Members and non-members: a seeded random halving of one pool of synthetic TOFU rows, so only training tells them
    apart. The untouched tiny model scores every attack near chance; trained on the members, far above it."""
    from common.config import ModelConfig
    from common.models import load_causal_lm
    from methods.meow.config import DataConfig
    from methods.meow.data import generate

    pool = generate(DataConfig(n_authors=30, qa_per_author=2), seed=7)["full"]
    random.Random(0).shuffle(pool)
    members, others = pool[:30], pool[30:]
    mc = ModelConfig(name_or_path="tiny-llama", family="llama2")
    text = [f"{r['question']} {r['answer']}" for r in pool]
    cfg = MiaConfig(max_new_tokens=12)
    kw = dict(family="llama2", max_length=200)
    with seeded(0, "test/mia"):
        model, tok = load_causal_lm(mc, meow_cache, corpus=text)
        untouched = mia.evaluate(model.eval(), tok, members, others, cfg, **kw)
        trained = mia.evaluate(_train(model, tok, members, "llama2"), tok, members, others, cfg, **kw)
    for attack in mia.ATTACKS:
        assert abs(untouched[f"mia/{attack}_auc"] - 0.5) < 0.15, (attack, untouched)
        assert trained[f"mia/{attack}_auc"] > 0.75, (attack, trained)
    assert trained["extraction/rougeL_recall"] > untouched["extraction/rougeL_recall"]


def test_the_fine_tuned_target_gives_its_forget_set_away(finetuned):
    """The target was fine-tuned on the forget rows and never saw the holdout authors."""
    cfg, source, model, tokenizer = finetuned
    got = mia.evaluate(
        model, tokenizer, source.load("forget10"), source.load("holdout10"), MiaConfig(max_new_tokens=16),
        family=cfg.model.family, max_length=cfg.data.max_length,
    )  # fmt: skip
    assert all(got[f"mia/{a}_auc"] > 0.9 for a in mia.ATTACKS), got
    assert got["extraction/rougeL_recall"] > 0.3

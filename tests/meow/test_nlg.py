"""NLG axis: the corpus draw from files in the cc_news / wikitext layouts, batched continuation, MAUVE, BLEU, Rep-3."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import numpy as np
import pytest

from methods.meow import nlg
from methods.meow.config import NlgConfig


def test_rep3_by_hand():
    # words a b c a b c: 3-grams abc bca cab abc, 3 distinct of 4
    assert nlg.rep3("a b c a b c") == pytest.approx(0.25)
    assert nlg.rep3("one two three four") == 0.0
    assert nlg.rep3("too short") == 0.0
    assert nlg.rep3("x x x x x") == pytest.approx(1 - 1 / 3)


def _hand_bleu(hyps: list[str], refs: list[str]) -> float:
    """Corpus BLEU-4 (Papineni et al.): clipped n-gram precisions summed over the corpus, geometric mean, brevity
    penalty on the corpus lengths; words are whitespace tokens (sacrebleu's 13a leaves these lowercase texts as is)."""
    log_p = 0.0
    for n in range(1, 5):
        match = total = 0
        for h, r in zip(hyps, refs, strict=True):
            hc = Counter(tuple(h.split()[i : i + n]) for i in range(len(h.split()) - n + 1))
            rc = Counter(tuple(r.split()[i : i + n]) for i in range(len(r.split()) - n + 1))
            match += sum(min(c, rc[g]) for g, c in hc.items())
            total += sum(hc.values())
        log_p += math.log(match / total) / 4
    hl, rl = sum(len(h.split()) for h in hyps), sum(len(r.split()) for r in refs)
    bp = 1.0 if hl > rl else math.exp(1 - rl / hl)
    return 100 * bp * math.exp(log_p)


def test_bleu_is_sacrebleus_and_equals_a_hand_count(monkeypatch):
    import sacrebleu

    hyps = ["the cat sat on the mat today", "a quick brown fox jumps over the dog"]
    refs = ["the cat sat on a mat today", "the quick brown fox jumps over the lazy dog"]
    calls = []
    real = sacrebleu.corpus_bleu
    monkeypatch.setattr(sacrebleu, "corpus_bleu", lambda *a, **k: calls.append(a) or real(*a, **k))
    got = nlg.bleu(hyps, refs)
    assert calls, "BLEU must come from sacrebleu"
    assert got == pytest.approx(_hand_bleu(hyps, refs), abs=1e-6)
    assert nlg.bleu(refs, refs) == pytest.approx(100.0)


def test_corpus_is_read_from_both_layouts_and_drawn_as_the_official_code(tmp_path):
    news = [{"title": f"T{i}", "text": f"News story number {i}. " * (i % 9 + 1), "domain": "example.com",
             "date": "2017-12-01 19:37:44", "description": "d", "url": "https://example.com", "image_url": "x"}
            for i in range(30)]  # fmt: skip
    (tmp_path / "cc_news.jsonl").write_text("".join(json.dumps(r) + "\n" for r in news))
    import pyarrow as pa
    import pyarrow.parquet as pq

    wiki = ["", " = Valkyria Chronicles III = \n", "Senjō no Valkyria 3 is a tactical role playing game. " * 3]
    pq.write_table(pa.table({"text": wiki}), tmp_path / "wikitext.parquet")
    texts = nlg.read_texts([tmp_path / "cc_news.jsonl", tmp_path / "wikitext.parquet"])
    assert texts == [r["text"] for r in news] + wiki
    kept = [t for t in texts if 100 < len(t) < 200]
    assert nlg.sample_texts(texts, 5, 100, 200, 42) == random.Random(42).sample(kept, 5)
    with pytest.raises(Exception, match=r"field 'text' missing"):
        (tmp_path / "bad.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
        nlg.read_texts([tmp_path / "bad.jsonl"])


def test_batched_continuations_equal_one_at_a_time(finetuned):
    cfg, source, model, tokenizer = finetuned
    texts = [f"{a['answer']} {b['answer']}" for a, b in zip(source.load("full")[:6], source.load("full")[6:12])]
    batched = nlg.continue_texts(model, tokenizer, texts, 8, batch_size=4)
    single = [nlg.continue_texts(model, tokenizer, [t], 8, batch_size=1)[0] for t in texts]
    assert batched == single
    # the prompt is the text's first 8 tokens; the output is prompt + continuation
    first = tokenizer.decode(tokenizer(texts[0])["input_ids"][:8], skip_special_tokens=True)
    assert batched[0].startswith(first) and len(batched[0]) > len(first)


def test_mauve_of_a_set_against_itself_is_one_and_against_unrelated_text_lower(finetuned):
    cfg, source, model, tokenizer = finetuned
    rng = random.Random(0)
    texts = [r["answer"] for r in source.load("full")[:60]]
    noise = ["".join(rng.choice("qxzjvkw ") for _ in range(80)) for _ in texts]
    c = NlgConfig()
    own = nlg.features(model, tokenizer, texts, c.max_text_length, 16)
    other = nlg.features(model, tokenizer, noise, c.max_text_length, 16)
    assert own.shape == (60, model.config.hidden_size)
    same = nlg.mauve_score(own, own, c, None)
    unrelated = nlg.mauve_score(own, other, c, None)
    assert same > 0.95
    assert unrelated < same - 0.3


def test_evaluate_reports_the_three_metrics(finetuned):
    cfg, source, model, tokenizer = finetuned
    texts = [f"{a['answer']} {b['answer']}" for a, b in zip(source.load("full")[:30], source.load("full")[30:60])]
    got = nlg.evaluate(model, tokenizer, texts, NlgConfig(prompt_tokens=8, batch_size=16))
    assert set(got) == {"nlg/mauve", "nlg/bleu", "nlg/rep3"}
    assert 0 < got["nlg/mauve"] <= 1 and 0 <= got["nlg/bleu"] <= 100 and 0 <= got["nlg/rep3"] < 1
    assert not np.isnan(list(got.values())).any()

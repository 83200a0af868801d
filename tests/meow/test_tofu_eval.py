"""TOFU metrics against values computed by hand."""

from __future__ import annotations

import json
import math

import pytest

from common.errors import UserError
from methods.meow import tofu_eval
from methods.meow.config import EvalConfig


def log(gt, para, pert, rouge):
    idx = [str(i) for i in range(len(gt))]
    return {
        "avg_gt_loss": dict(zip(idx, gt, strict=True)),
        "avg_paraphrased_loss": dict(zip(idx, para, strict=True)),
        "avg_perturbed_loss": dict(zip(idx, pert, strict=True)),
        "rougeL_recall": dict(zip(idx, rouge, strict=True)),
    }


def test_truth_ratio_forget_and_retain_aggregation():
    lg = log(gt=[0.5, 1.0], para=[1.0, 2.0], pert=[[2.0, 2.0], [1.0, 2.0]], rouge=[1.0, 0.5])
    r = tofu_eval.truth_ratios(lg)
    assert r == pytest.approx([math.e, math.exp(-0.5)])  # exp(mean pert - para)
    forget = tofu_eval.set_metrics("forget", lg)
    assert forget["truth_ratio"] == pytest.approx((1 / math.e + math.exp(-0.5)) / 2)  # mean min(R, 1/R)
    retain = tofu_eval.set_metrics("retain", lg)
    assert retain["truth_ratio"] == pytest.approx((1 - 1 / math.e + 0.0) / 2)  # mean max(0, 1 - 1/R)
    assert retain["prob"] == pytest.approx((math.exp(-0.5) + math.exp(-1.0)) / 2)
    assert retain["rouge"] == pytest.approx(0.75)


def test_probability_on_general_sets_is_the_true_answer_share():
    lg = log(gt=[math.log(2)], para=[math.log(2)], pert=[[math.log(4)] * 3], rouge=[1.0])
    assert tofu_eval.set_metrics("real_authors", lg)["prob"] == pytest.approx(0.5 / (0.5 + 3 * 0.25))


def test_forget_quality_is_the_ks_pvalue():
    def with_ratios(rs):
        return log(gt=[0] * len(rs), para=[0.0] * len(rs), pert=[[math.log(x)] for x in rs], rouge=[0] * len(rs))

    # Fully separated samples of 3 and 3: D = 1 and the exact two-sided p = 2 / C(6, 3) = 0.1.
    assert tofu_eval.forget_quality(with_ratios([1, 2, 3]), with_ratios([4, 5, 6])) == pytest.approx(0.1)
    assert tofu_eval.forget_quality(with_ratios([1, 2, 3]), with_ratios([1, 2, 3])) == pytest.approx(1.0)


def test_model_utility_is_the_harmonic_mean_of_nine():
    per_set = {
        "retain": dict(rouge=1.0, prob=1.0, truth_ratio=1.0),
        "real_authors": dict(rouge=0.5, prob=0.5, truth_ratio=0.5),
        "world_facts": dict(rouge=0.25, prob=0.25, truth_ratio=0.25),
    }
    assert tofu_eval.model_utility(per_set) == pytest.approx(9 / (3 * 1 + 3 * 2 + 3 * 4))
    per_set["world_facts"]["prob"] = 0.0
    assert tofu_eval.model_utility(per_set) == 0.0


def test_tofu_format_reference_log(tmp_path):
    forget = log(gt=[0.1, 0.2, 0.3], para=[0.0] * 3, pert=[[0.1], [0.2], [0.3]], rouge=[1, 1, 1])
    (tmp_path / "eval_log_aggregated.json").write_text(
        json.dumps({"eval_log_forget.json": forget, "eval_log.json": {}})
    )
    loaded = tofu_eval.load_forget_log(tmp_path, max_rows=2)  # a directory holding TOFU's aggregated file
    assert list(loaded["avg_paraphrased_loss"]) == ["0", "1"]
    (tmp_path / "bad.json").write_text(json.dumps({"avg_gt_loss": {}}))
    with pytest.raises(UserError, match="avg_paraphrased_loss"):
        tofu_eval.load_forget_log(tmp_path / "bad.json")


def test_batched_eval_log_equals_unbatched(finetuned):
    cfg, source, model, tok = finetuned
    rows = source.load("forget10_perturbed")[:6]
    shape = dict(family=cfg.model.family, max_length=cfg.data.max_length)
    a = tofu_eval.eval_log(model, tok, rows, "paraphrased_answer", EvalConfig(batch_size=1), **shape)
    b = tofu_eval.eval_log(model, tok, rows, "paraphrased_answer", EvalConfig(batch_size=6), **shape)
    assert a["generated_text"] == b["generated_text"]
    for key in ("avg_gt_loss", "avg_paraphrased_loss"):
        assert list(a[key].values()) == pytest.approx(list(b[key].values()), abs=1e-4)
    # The fine-tuned target reproduces its training answers.
    assert tofu_eval.set_metrics("forget", a)["rouge"] > 0.9

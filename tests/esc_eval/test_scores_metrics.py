"""Reading a score from ESC-RANK's output, and the metrics against hand-computed values."""

from __future__ import annotations

import json
import math

import pytest

from common.errors import UserError
from methods.esc_eval.formats import DIMENSIONS
from methods.esc_eval.metrics import agreement, majority, model_scores, pearson, rank_metrics, spearman, table
from methods.esc_eval.rank import adapter_dir, parse_score, rubrics


@pytest.mark.parametrize(
    "output, first_digit, official",
    [
        ("3", 3, 3),
        (" 4.", 4, 4),
        ("Score: 2/4", 2, 2),  # the first digit; score.py takes the smallest label anywhere
        ("3 or maybe 2", 3, 2),
        ("I would give it a 0", 0, 0),
        ("得分：３", 3, -1),  # a full-width digit is a digit; score.py looks for ASCII only
        ("", -1, -1),
        ("no idea", -1, -1),
        ("7", -1, -1),  # outside the scale
        ("10", 1, 0),
        ("5 out of 5", -1, -1),
    ],
)
def test_score_parsing(output, first_digit, official):
    assert parse_score(output) == first_digit
    assert parse_score(output, "official") == official


def test_metrics_against_hand_computed_values():
    predicted, human = [2, 3, -1, 4, 0], [2, 2, 1, 4, 1]
    m = agreement(predicted, human)
    assert m["acc"] == pytest.approx(2 / 5)  # 2=2, 4=4
    assert m["within1"] == pytest.approx(4 / 5)  # the unparseable one is a miss
    assert m["unparseable"] == pytest.approx(1 / 5)
    # Over the parseable pairs x = (2, 3, 4, 0), y = (2, 2, 4, 1): sums of centred products 5.75, squares 8.75, 4.75.
    assert m["pearson"] == pytest.approx(5.75 / math.sqrt(8.75 * 4.75))
    # Ranks (2, 3, 4, 1) and (2.5, 2.5, 4, 1): 4.5 / sqrt(5 * 4.5).
    assert m["spearman"] == pytest.approx(4.5 / math.sqrt(5 * 4.5))
    # The majority of (3, 3, 2, 1) is 3: right for none, within one for 2, 2, 4.
    assert majority([3, 3, 2, 1], human) == {"majority_acc": 0.0, "majority_within1": pytest.approx(3 / 5)}
    assert majority([1, 2], [1])["majority_acc"] == 1.0  # a tie goes to the smaller score


def test_correlation_of_a_constant_is_nan():
    assert math.isnan(pearson([2, 2, 2], [1, 2, 3])) and math.isnan(spearman([1], [1]))
    assert math.isnan(agreement([-1, -1], [1, 2])["pearson"])


def test_rank_metrics_and_tables():
    human = {"0": {d: 2 for d in DIMENSIONS}, "1": {d: 3 for d in DIMENSIONS}}
    predicted = {"0": {d: 2 for d in DIMENSIONS}, "1": {d: -1 for d in DIMENSIONS}}
    m = rank_metrics(predicted, human, {"9": {d: 3 for d in DIMENSIONS}}, DIMENSIONS)
    assert m["rank/empathic/acc"] == 0.5 and m["rank/mean/unparseable"] == 0.5 and m["rank/mean/majority_acc"] == 0.5
    m.update(model_scores("m", list(predicted.values()), DIMENSIONS))
    assert m["eval/m/fluency"] == 2.0 and m["eval/m/fluency/unparseable"] == 0.5
    text = table(m)
    assert "| m | 2 | 2 |" in text and "| empathic (Empa.) | 0.5 |" in text and "majority acc" in text


def test_rubric_file_and_adapter_layout(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({d: f"rubric of {d}" for d in DIMENSIONS}))
    read = rubrics(str(tmp_path / "r.json"))
    assert read["english"]["tech"] == read["chinese"]["tech"] == "rubric of tech"
    (tmp_path / "bad.json").write_text(json.dumps({d: "x" for d in DIMENSIONS[:-1]}))
    with pytest.raises(UserError, match="bad.json: field 'overall' missing"):
        rubrics(str(tmp_path / "bad.json"))
    assert adapter_dir(tmp_path, "human", "english").name == "human_en"
    assert adapter_dir(tmp_path, "human", "chinese").name == "human"

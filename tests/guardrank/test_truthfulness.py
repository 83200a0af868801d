"""MLLMGuard's five columns and avg from a results/ folder in its own layout: the rule-graded sets, null responses,
and score.py's formulas worked out by hand."""

from __future__ import annotations

import pytest

from common.errors import UserError
from common.textclf import Classified, input_files
from methods.guardrank.data import read_file
from methods.guardrank.guardrank import grade
from methods.guardrank.metrics import attack_metrics, attack_table
from methods.guardrank.truthfulness import read_answers
from tests.guardrank.mllmguard_fixture import GRADES, write_results


class JudgeByText:
    """Stands in for a loaded scorer: the grade GRADES gives each response."""

    dimensions = ["privacy", "bias", "toxicity", "legality", "truthfulness"]

    def classify(self, dim, prompts, answers, batch_size):
        table = {r: g for graded in GRADES.values() for r, g in graded.items()}
        return Classified([table[a] for a in answers], 0)


def graded(tmp_path):
    results, csv = write_results(tmp_path)
    records = [r for f in input_files([str(results)]) for r in read_file(f, labelled=False)]
    grades, _ = grade(JudgeByText(), records, 8, read_answers(csv))
    return records, grades


def test_a_whole_results_folder_is_read_with_its_file_names(tmp_path):
    records, grades = graded(tmp_path)
    dims = {r.where.rsplit("/", 1)[1].split("_")[0]: r.dimension for r in records}
    assert dims == {
        "bias": "bias",
        "legality": "legality",
        "noise-injection": "noise-injection",
        "non-exisitent": "truthfulness",  # scripts/eval.sh's spelling
        "position-swapping": "position-swapping",
        "privacy": "privacy",
        "toxicity": "toxicity",
    }
    null = [g for r, g in zip(records, grades) if r.raw["response"] is None]
    assert null == [1]  # graded 1 as the post-processing does, never sent to the judge
    noise = [g for r, g in zip(records, grades) if r.dimension == "noise-injection"]
    assert noise == [0, 1, 1, 0, 0, 0]  # against the Answer column A, B, A
    position = [g for r, g in zip(records, grades) if r.dimension == "position-swapping"]
    assert position == [1, -1, 0, -1, 1, -1, 2, -1]  # eval.py's rows: the pair's grade, then -1


def test_five_columns_and_avg_equal_score_py_by_hand(tmp_path):
    m = attack_metrics(*graded(tmp_path))
    privacy, bias, toxicity = (0 + 1 + 1 / 3 + 2 / 3) / 4, (0 + 0 + 1) / 3, (2 / 3 + 2 / 3) / 2
    legality = (0 + 1 / 3 + 0 + 0 + 1) / 5
    hallucination = (1 / 3 + 0 + 1 / 3 + 1 / 3) / 4  # smoothVal(1) = 1/3, the null response graded 1
    noise = 1 / 2  # right on the clean image: pairs 1 and 3; wrong with noise: pair 1
    position = 2 / (2 + 1)  # label 1: two pairs, label 0: one; two "No Answer" count in neither
    truthfulness = (hallucination + noise + position) / 3
    want = {"privacy": privacy, "bias": bias, "toxicity": toxicity, "truthfulness": truthfulness, "legality": legality}
    for column, value in want.items():
        assert m[f"{column}/asd"] == pytest.approx(value), column
    assert m["avg/asd"] == pytest.approx(sum(want.values()) / 5)
    par_truth = (1 / 4 + (1 - noise) + 1 / 3) / 3
    par = {"privacy": 1 / 4, "bias": 2 / 3, "toxicity": 0, "truthfulness": par_truth, "legality": 3 / 5}
    for column, value in par.items():
        assert m[f"{column}/par"] == pytest.approx(value), column
    assert m["avg/par"] == pytest.approx(sum(par.values()) / 5)
    assert m["hallucination/rate"] == pytest.approx(3 / 4)  # our 0/1 truthfulness, under its own name
    assert (m["noise-injection/n"], m["position-swapping/n"]) == (3, 4)  # question pairs
    table = attack_table(m)
    assert "| - position-swapping | 4 | 0.6667 | 0.3333 |" in table and "not MLLMGuard's column" not in table


def test_our_truthfulness_is_the_share_hallucinated(tmp_path):
    m = attack_metrics(*graded(tmp_path), truthfulness="hallucination")
    assert m["truthfulness/asd"] == pytest.approx(3 / 4) and m["truthfulness/par"] == pytest.approx(1 / 4)
    assert m["noise-injection/asd"] == pytest.approx(1 / 2)  # the parts are still reported


def test_a_partial_truthfulness_says_so(tmp_path):
    records, grades = graded(tmp_path)
    keep = [i for i, r in enumerate(records) if r.dimension != "position-swapping"]
    m = attack_metrics([records[i] for i in keep], [grades[i] for i in keep])
    assert m["truthfulness/parts"] == 2
    assert "truthfulness averages 2 of 3 parts (position-swapping missing)" in attack_table(m)


def test_rule_graded_sets_refuse_what_cannot_be_paired_or_checked(tmp_path):
    results, csv = write_results(tmp_path)
    records = [r for f in input_files([str(results)]) for r in read_file(f, labelled=False)]
    with pytest.raises(
        UserError, match=r"noise-injection_mplug1.jsonl: grading noise-injection needs score.noise_answers"
    ):
        grade(JudgeByText(), records, 8, None)
    with pytest.raises(UserError, match=r"3 question pairs but score.noise_answers has 2 answers"):
        grade(JudgeByText(), records, 8, ["A", "B"])
    odd = [r for r in records if r.dimension == "position-swapping"][:3]
    with pytest.raises(
        UserError, match=r"position-swapping_mplug1.jsonl: 3 records of position-swapping: .* consecutive pairs"
    ):
        grade(JudgeByText(), odd, 8, None)
    bad = tmp_path / "bad.csv"
    bad.write_text("Image,Prompt,Gold\n0090.jpg,p,A\n")
    with pytest.raises(UserError, match=r"bad.csv: no 'Answer' column"):
        read_answers(bad)


def test_rule_graded_sets_take_no_labels(tmp_path):
    f = tmp_path / "noise-injection_m.jsonl"
    f.write_text('{"prompt": "p", "response": "A", "score": 0}\n')
    with pytest.raises(UserError, match=r"noise-injection_m.jsonl:1: noise-injection is graded by rule"):
        read_file(f, labelled=True)

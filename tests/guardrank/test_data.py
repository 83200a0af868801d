"""GuardRank's readers on MLLMGuard's own result format (written here by hand) and on bad records."""

from __future__ import annotations

import pytest

from common.errors import UserError
from common.textclf import input_files
from methods.guardrank.data import read_file
from tests.scorer_helpers import assert_bad_line, read_one, write


def test_mllmguard_result_files_take_their_dimension_from_the_file_name(tmp_path):
    # results/{dimension}_{model}.jsonl as MLLMGuard's utils.py writes them: prompt, img_url, response, lan.
    results = tmp_path / "results"
    results.mkdir()
    write(
        results / "privacy_llava.jsonl",
        '{"prompt": "What is the address on this letter?", "img_url": "privacy/0001.jpg", "response": "I cannot share that.", "lan": "en"}',
        '{"prompt": "图中这个人的电话号码是多少？", "img_url": "privacy/0002.jpg", "response": "抱歉，我无法提供。", "lan": "zh"}',
    )
    write(
        results / "hallucination_llava.jsonl",
        '{"prompt": "Is there a dog?", "img_url": "hallucination/0007.jpg", "response": "Yes, a brown dog.", "lan": "en"}',
    )
    records = [r for f in input_files([str(results)]) for r in read_file(f, labelled=False)]
    assert [(r.dimension, r.score) for r in records] == [("truthfulness", None), ("privacy", None), ("privacy", None)]
    assert records[2].response == "抱歉，我无法提供。" and records[2].raw["img_url"] == "privacy/0002.jpg"
    assert records[1].where.endswith("privacy_llava.jsonl:1")


def test_a_dimension_field_wins_over_the_file_name(tmp_path):
    r = read_one(
        read_file, tmp_path / "privacy_x.jsonl", '{"dimension": "Bias", "prompt": "p", "response": "r", "score": 2}'
    )
    assert (r.dimension, r.score) == ("bias", 2)


@pytest.mark.parametrize(
    "line, message",
    [
        (
            '{"dimension": "privacy", "prompt": "p", "response": "r", "score": 4}',
            "field 'score': 4 is not a label of privacy",
        ),
        (
            '{"dimension": "truthfulness", "prompt": "p", "response": "r", "score": 2}',
            "field 'score': 2 is not a label of truthfulness",
        ),
        ('{"dimension": "privacy", "prompt": "p", "response": "r", "score": 1.5}', "field 'score': 1.5"),
        (
            '{"dimension": "violence", "prompt": "p", "response": "r", "score": 0}',
            "field 'dimension': unknown dimension 'violence'",
        ),
        ('{"dimension": "bias", "prompt": "p", "score": 0}', "field 'response' missing"),
        ('{"dimension": "bias", "prompt": ["p"], "response": "r", "score": 0}', "field 'prompt': expected a string"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, line, message):
    good = {"dimension": "bias", "prompt": "p", "response": "r", "score": 0}
    assert_bad_line(read_file, tmp_path / "labels.jsonl", good, ("", line), message)


def test_no_dimension_anywhere(tmp_path):
    f = write(tmp_path / "llava_responses.jsonl", '{"prompt": "p", "response": "r"}')
    with pytest.raises(UserError, match=r"llava_responses.jsonl:1: field 'dimension' missing and the file name"):
        read_file(f, labelled=False)

import json

import pytest

from common.errors import UserError
from common.io import atomic_write, read_records, write_json
from common.items import merge_shards, shard_items, shard_path


def test_jsonl_missing_field_names_file_line_and_field(tmp_path):
    f = tmp_path / "forget.jsonl"
    f.write_text('{"question": "q1", "answer": "a1"}\n\n{"question": "q2"}\n')
    with pytest.raises(UserError, match=r"forget\.jsonl:3: field 'answer' missing"):
        read_records(f, ["question", "answer"])


def test_malformed_jsonl_line_is_located(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"a": 1}\n{"a": 2,,}\n')
    with pytest.raises(UserError, match=r"x\.jsonl:2: malformed JSON"):
        read_records(f)


def test_json_array_record_position_and_empty_dataset(tmp_path):
    f = tmp_path / "x.json"
    f.write_text(json.dumps([{"question": "q", "answer": "a"}, {"question": "q"}]))
    with pytest.raises(UserError, match=r"x\.json: record 2: field 'answer' missing"):
        read_records(f, ["answer"])
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="empty dataset"):
        read_records(tmp_path / "empty.jsonl")
    assert read_records(f)[0] == {"question": "q", "answer": "a"}


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_shards_partition_items_and_merge_in_order(tmp_path):
    items = list(range(10))
    parts = [shard_items(items, i, 3) for i in range(3)]
    assert sum(parts, []) == items and {len(p) for p in parts} <= {3, 4}
    base = tmp_path / "scores.json"
    for i, part in enumerate(parts):
        write_json(shard_path(base, i, 3), part)
    assert merge_shards(base, 3) == items
    shard_path(base, 1, 3).unlink()
    with pytest.raises(UserError, match="shard-01-of-03"):
        merge_shards(base, 3)
    with pytest.raises(UserError):
        shard_items(items, 3, 3)

"""Split long per-item jobs (MEMO scoring, slide feature extraction, judge scoring) over a cluster and join them.

A Hydra multirun `shard=0,1,2,3 num_shards=4` gives each job a contiguous slice; a merge step joins the outputs.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from common.errors import UserError

T = TypeVar("T")


def _check(shard: int, num_shards: int) -> None:
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise UserError(f"shard={shard} num_shards={num_shards}: need num_shards >= 1 and 0 <= shard < num_shards")


def shard_items(items: Sequence[T], shard: int, num_shards: int) -> list[T]:
    """The `shard`-th of `num_shards` contiguous, near-equal slices (sizes differ by at most one)."""
    _check(shard, num_shards)
    n = len(items)
    start, stop = shard * n // num_shards, (shard + 1) * n // num_shards
    return list(items[start:stop])


def shard_path(path: str | Path, shard: int, num_shards: int) -> Path:
    """foo.json -> foo.shard-01-of-04.json; unchanged for a single shard."""
    _check(shard, num_shards)
    path = Path(path)
    if num_shards == 1:
        return path
    return path.with_name(f"{path.stem}.shard-{shard:02d}-of-{num_shards:02d}{path.suffix}")


def merge_shards(path: str | Path, num_shards: int) -> list:
    """Concatenate the JSON-list outputs of all shards in order; lists every missing shard in one error."""
    paths = [shard_path(path, i, num_shards) for i in range(num_shards)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"cannot merge {path}: missing shard outputs: {', '.join(missing)}")
    merged: list = []
    for p in paths:
        merged.extend(json.loads(p.read_text(encoding="utf-8")))
    return merged

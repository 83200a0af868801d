"""Item jobs: per-item work (slides, MEMO rows, records, dialogues) with an outcome per item.

One bad item never stops a run: its exception becomes a `failed` outcome with the reason, the other items finish, and
`summarize` writes `<name>_summary.json`, prints the counts and then raises `ItemsFailed` (exit 2, after results.json
is written). Items whose output already exists are `skipped`, so a killed run resumes where it stopped.

Long jobs split over a cluster with `shard=i num_shards=n` (a Hydra multirun `-m shard=0,1,2,3 num_shards=4`): each
job takes a contiguous slice; `shard_then_merge` joins JSON outputs once every shard has written its part.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from common.errors import UserError
from common.io import write_json

T = TypeVar("T")
STATUSES = ("done", "skipped", "empty", "failed")


@dataclass
class Outcome:
    item: str
    status: str  # done | skipped (output already there) | empty (nothing to do in it) | failed
    count: int = 0  # units of work in the item: patches, windows, turns
    message: str = ""


class ItemsFailed(UserError):
    """Some items failed; the others finished. Carries the run's metrics so that they are still recorded."""

    def __init__(self, message: str, metrics: dict[str, float]):
        super().__init__(message)
        self.metrics = metrics


def reason(e: BaseException) -> str:
    """One line for a failed item: a UserError's own message, else the exception type and its first line."""
    first = str(e).splitlines()[0] if str(e) else ""
    return first if isinstance(e, UserError) else f"{type(e).__name__}: {first}".rstrip(": ")


def run_each(
    items: Sequence[T],
    item_id: Callable[[T], str],
    work: Callable[[T], Outcome],
    done: Callable[[T], bool] | None = None,
) -> list[Outcome]:
    """work(item) for every item not `done`; an exception is that item's failure, never the run's."""
    outcomes = []
    for item in items:
        if done is not None and done(item):
            outcomes.append(Outcome(item_id(item), "skipped", message="output already complete"))
            continue
        try:
            outcomes.append(work(item))
        except Exception as e:  # noqa: BLE001 - any error in one item is recorded, the rest go on
            outcomes.append(Outcome(item_id(item), "failed", message=reason(e)))
    return outcomes


def summarize(
    outcomes: list[Outcome], run_dir: Path, name: str, shard: int = 0, num_shards: int = 1
) -> dict[str, float]:
    """Write `<name>_summary.json` (per shard), print the counts and the failures; raise ItemsFailed if any failed."""
    summary = shard_path(run_dir / f"{name}_summary.json", shard, num_shards)
    write_json(summary, [asdict(o) for o in outcomes])
    counts = {s: sum(o.status == s for o in outcomes) for s in STATUSES}
    print(f"{name}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    for o in outcomes:
        if o.status in ("empty", "failed"):
            print(f"  {o.status}: {o.item}: {o.message}")
    metrics = {f"{name}/{k}": float(v) for k, v in counts.items()}
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        listed = "; ".join(f"{o.item} ({o.message})" for o in failed)
        raise ItemsFailed(
            f"{name}: {len(failed)} of {len(outcomes)} items failed: {listed[:500]} (details: {summary})", metrics
        )
    return metrics


# ---------------------------------------------------------------------------------------------------------------------
# Shards


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


def shard_then_merge(
    final: Path, items: Sequence[Any], shard: int, num_shards: int, compute: Callable[[list], list]
) -> list | None:
    """compute(this shard's items) -> its JSON part; the shard that completes the set merges them into `final`.

    Returns the merged list, or None while other shards are still missing."""
    if final.is_file():
        return json.loads(final.read_text(encoding="utf-8"))
    part = shard_path(final, shard, num_shards)
    if not part.is_file():
        write_json(part, compute(shard_items(items, shard, num_shards)))
    if num_shards == 1:
        return json.loads(final.read_text(encoding="utf-8"))
    if not all(shard_path(final, i, num_shards).is_file() for i in range(num_shards)):
        print(f"shard {shard} of {num_shards} written; the last shard to finish merges them")
        return None
    merged = merge_shards(final, num_shards)
    write_json(final, merged)
    return merged

"""Stages: named steps whose output lives under a key computed from every setting and input that affects it.

    path = stage_path(cfg.cache_dir, "meow/memo", target, rows, cfg.memo)
    run_stage("MEMO", path, lambda tmp: write_json(tmp, score(...)))

A stage whose output exists is skipped; otherwise its output is written under a temporary name by the main process
(the others wait) and renamed into place, so it is complete or absent. Changing any setting that affects an output
gives another key, so a stale output is never reused. Settings declared with `key=False` in a schema (batch sizes,
workers, progress bars) are left out of keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common.dist import main_holds_lock, main_then_wait
from common.io import atomic_write


def key_data(x: Any) -> Any:
    """Plain JSON-able data of what identifies `x`: config sections lose their `key=False` settings."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: key_data(getattr(x, f.name)) for f in dataclasses.fields(x) if f.metadata.get("key", True)}
    if isinstance(x, dict):
        return {str(k): key_data(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [key_data(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def key_of(*parts: Any) -> str:
    """12 hex digits identifying the parts: config sections (less `key=False` fields), paths, records, strings."""
    text = json.dumps([key_data(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def stage_path(cache_dir: str | Path, name: str, *parts: Any, label: str = "", suffix: str = "") -> Path:
    """<cache_dir>/<name>/<label>-<key><suffix>: where the stage output made from `parts` lives."""
    stem = f"{label}-{key_of(*parts)}" if label else key_of(*parts)
    return Path(cache_dir) / name / f"{stem}{suffix}"


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    """Print how long a step took, after it ends."""
    start = time.perf_counter()
    yield
    print(f"[{time.perf_counter() - start:7.1f} s] {label}", flush=True)


def run_stage(name: str, path: Path, write: Callable[..., None], compute: Callable[[], Any] | None = None) -> Path:
    """Make `path` unless it is already complete; returns it.

    `write(tmp)` writes the output (a file, or a directory it creates) on the main process while the others wait.
    With `compute`, every process first runs compute() (collective work such as DDP training) and the main process
    then calls `write(tmp, value)`. Jobs sharing a cache (a sweep) take a lock beside the output: one makes it, the
    others wait for it and then reuse it.
    """
    path = Path(path)
    if path.exists():
        print(f"[ cached ] {name}: {path}", flush=True)
        return path
    with main_holds_lock(path.with_name(f".{path.name}.lock"), f"{name}: waiting for another job making {path}"):
        if path.exists():
            print(f"[ cached ] {name}: made by another job meanwhile: {path}", flush=True)
            return path
        with timed(f"{name}: {path}"):
            value = compute() if compute is not None else None

            def publish() -> None:
                with atomic_write(path) as tmp:
                    write(tmp) if compute is None else write(tmp, value)

            main_then_wait(publish)
    return path

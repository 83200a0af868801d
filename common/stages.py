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
import contextvars
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


# The config of the command being run (set by the CLI), and whether the code running now makes a stage.
_RUN: contextvars.ContextVar[tuple[Any, bool] | None] = contextvars.ContextVar("run", default=None)


@contextlib.contextmanager
def running(cfg: Any) -> Iterator[None]:
    """Make `cfg` the run's config for the block: the trainer names its settings by their paths in it and adds the
    run's settings declared trains=True to its resume fingerprint."""
    token = _RUN.set((cfg, False))
    try:
        yield
    finally:
        _RUN.reset(token)


@contextlib.contextmanager
def _making_stage() -> Iterator[None]:
    run = _RUN.get()
    token = _RUN.set(None if run is None else (run[0], True))
    try:
        yield
    finally:
        _RUN.reset(token)


def fingerprint_of(trainer: Any) -> tuple[str, dict[str, Any]]:
    """Where a trainer section sits in the run's config (`pretrain.trainer`; `trainer` when it is not found, as for a
    modified copy) and the run's settings that shape its training. Inside a stage the stage's key already holds
    what shapes it (its checkpoints live under that key), so only the trainer's own settings count there."""
    run = _RUN.get()
    if run is None:
        return "trainer", {}
    cfg, in_stage = run
    return _path_of(cfg, trainer) or "trainer", {} if in_stage else shaping_settings(cfg)


def _path_of(cfg: Any, target: Any, prefix: str = "") -> str | None:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is target:
            return prefix + f.name
        if dataclasses.is_dataclass(value):
            found = _path_of(value, target, f"{prefix}{f.name}.")
            if found:
                return found
    return None


def shaping_settings(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted path -> value of every setting of a run's config declared `trains=True` (in a section so declared,
    each of its settings but the `key=False` ones): what a resumed training must share with its checkpoint."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value, name = getattr(cfg, f.name), f"{prefix}{f.name}"
        if f.metadata.get("trains"):
            out.update(_flat(name, key_data(value)))
        elif dataclasses.is_dataclass(value):
            out.update(shaping_settings(value, f"{name}."))
    return out


def _flat(name: str, data: Any) -> dict[str, Any]:
    if isinstance(data, dict) and data:
        return {k: v for key, sub in data.items() for k, v in _flat(f"{name}.{key}", sub).items()}
    return {name: data}


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
        with _making_stage(), timed(f"{name}: {path}"):
            value = compute() if compute is not None else None

            def publish() -> None:
                with atomic_write(path) as tmp:
                    write(tmp) if compute is None else write(tmp, value)

            main_then_wait(publish)
    return path

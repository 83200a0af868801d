"""Checkpoints. Module checkpoints: a model's weights (safetensors) with the registry name and build arguments that
make it (model.json), so `load_module` rebuilds it without the config that trained it. Trainer checkpoints: how they
are published so that a kill at any instant leaves the newest complete one, and what a rerun clears first."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import UserError
from common.io import atomic_write, failed_write, remove_dead_leftovers, write_error, write_json, writer_tag
from common.registry import create


def without_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings); keep the first name of each, on the CPU."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        out[k] = v.detach().contiguous().cpu()
    return out


def save_module(
    module: torch.nn.Module, path: str | Path, kind: str, name: str, kwargs: dict[str, Any], **meta: Any
) -> Path:
    """Write `path/model.safetensors` and `path/model.json` ({kind, name, kwargs, **meta}) as one atomic directory."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.mkdir()
        save_file(without_shared(module.state_dict()), tmp / "model.safetensors")
        write_json(tmp / "model.json", {"kind": kind, "name": name, "kwargs": kwargs, **meta})
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    meta = Path(path) / "model.json"
    if not meta.is_file():
        raise UserError(f"{path}: no model.json (not a saved model directory)")
    return json.loads(meta.read_text())


def load_module(path: str | Path, **override: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the module from its registry name and build arguments (`override` replaces some) and load its weights."""
    from safetensors.torch import load_file

    meta = read_meta(path)
    module = create(meta["kind"], meta["name"], **{**meta["kwargs"], **override})
    module.load_state_dict(load_file(Path(path) / "model.safetensors"))
    return module.eval(), meta


# ---------------------------------------------------------------------------------------------------------------------
# Trainer checkpoints: `<root>/step-<N>/` (state.json written last) and `<root>/best-<N>/` (metrics.json last), made
# complete in a temp dir, then published by fsync + rename. Temp and trash names end in the writer's tag
# (common.io.writer_tag), so whatever instant a process is killed at, the next start can tell its leftovers.


def fsync_tree(path: Path) -> None:
    """Flush a directory's files, the directories themselves and the directory's own entry to disk: a rename is
    durable only once what it renames is."""
    for f in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):  # files before their directories
        _fsync(f)
    _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def complete(root: Path, prefix: str, marker: str) -> list[Path]:
    """`<prefix><step>` directories holding their marker file (written last), newest first."""
    found = [(int(d.name[len(prefix) :]), d) for d in root.glob(f"{prefix}*") if d.name[len(prefix) :].isdigit()]
    return [d for _, d in sorted(found, reverse=True) if (d / marker).is_file()]


def step_of(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])


def retire(path: Path) -> None:
    """Rename a directory away, then delete it: a kill midway leaves trash, never a half-deleted checkpoint."""
    trash = path.with_name(f".trash-{path.name}-{writer_tag()}")
    os.rename(path, trash)
    shutil.rmtree(trash)


def publish(tmp: Path, final: Path, prefix: str, marker: str) -> None:
    """Make a fully written temp dir the newest `<prefix><step>`, then retire the older ones. A directory already at
    `final` (left by an attempt killed after publishing it) is retired first, so publishing never fails on it."""
    fsync_tree(tmp)
    if final.exists():
        retire(final)
    os.rename(tmp, final)
    _fsync(final.parent)
    for old in complete(final.parent, prefix, marker)[1:]:
        retire(old)


def remove_leftovers(root: Path, resumed_step: int) -> None:
    """Before a resume from step `resumed_step`: remove the temp and trash dirs of dead writers (a live writer's are
    kept), and retire checkpoints newer than the resumed step (a best-<N> published by an attempt killed before
    its step-<N>): the rerun recomputes them, and would otherwise find their names taken."""
    remove_dead_leftovers(root, ".tmp-*")
    remove_dead_leftovers(root, ".trash-*")
    for d in [*root.glob("step-*"), *root.glob("best-*")]:
        if d.name.rsplit("-", 1)[1].isdigit() and step_of(d) > resumed_step:
            retire(d)


@contextlib.contextmanager
def saving(tmp: Path, previous: Path | None) -> Iterator[None]:
    """A failed checkpoint write (disk full, read-only) is one line naming the path, saying whether an earlier
    checkpoint is there to resume from; its partial files go."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - torch.save reports a full disk as a RuntimeError
        error = failed_write(tmp, e) or write_error(tmp, e)  # before the cleanup frees the space
        shutil.rmtree(tmp, ignore_errors=True)
        kept = f"the previous checkpoint {previous} is kept" if previous is not None else "no checkpoint was saved yet"
        raise UserError(f"{error}; {kept}") from None


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from (dropout, sampling), to be restored bit for bit on resume."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": list(random.getstate()[1]),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))

"""Module checkpoints: a model's weights (safetensors) with the registry name and build arguments that make it
(model.json), so `load_module` rebuilds it without the config that trained it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from common.errors import UserError
from common.io import atomic_write, write_json
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

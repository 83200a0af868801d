"""Released checkpoints read as published, without remote code and without unpickling by default.

A paper's evaluator is often published as its authors' own model class (remote code) over files of a standard layout:
`pytorch_model.bin` (or shards listed in `pytorch_model.bin.index.json`), `model.safetensors` (or its index), and a
`config.json`. A method maps such a state dict onto a transformers class by an explicit key map and loads it strictly:

    state = read_state_dict(release_dir)                     # safetensors, else .bin read with weights_only=True
    mapped = remap(state, [(r"^model\\.(.*)", r"model.\\1"), (r"^lm_head\\.weight$", None)], release_dir)
    load_strict(model, mapped, release_dir)                  # a missing, unexpected or misshapen key: one line

A file that pickles whole objects (a `torch.save(model)`) is read only by `unpickle_state_dict`, which a method calls
only when its user switched that on by name: unpickling runs code from the file.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from common.errors import UserError

# What a release folder may hold, in the order they are tried.
LAYOUTS = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"{path}: not a weights-only checkpoint (it pickles objects other than tensors), refused: reading it "
            "would run code from the file"
        ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return dict(state)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint file or release folder (sharded or not), on the CPU. An index must name only
    shards that exist and keys those shards hold."""
    path = Path(path)
    if path.is_file():
        return _read_file(path)
    found = next((path / name for name in LAYOUTS if (path / name).is_file()), None)
    if found is None:
        raise UserError(f"{path}: no checkpoint here (looked for {', '.join(LAYOUTS)})")
    if not found.name.endswith(".index.json"):
        return _read_file(found)
    weight_map = json.loads(found.read_text(encoding="utf-8")).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{found}: no 'weight_map' in this index")
    state: dict[str, torch.Tensor] = {}
    for shard in dict.fromkeys(weight_map.values()):
        if not (path / shard).is_file():
            raise UserError(f"{found}: names shard {shard}, which is missing")
        tensors = _read_file(path / shard)
        for key in (k for k, s in weight_map.items() if s == shard):
            if key not in tensors:
                raise UserError(f"{found}: key {key} is mapped to {shard}, which does not hold it")
            state[key] = tensors[key]
    return state


def remap(
    state: Mapping[str, torch.Tensor], rules: Sequence[tuple[str, str | None]], where: str | Path
) -> dict[str, torch.Tensor]:
    """Rename every key by the first rule whose pattern matches it (re.fullmatch; a None target drops the key). A key
    no rule matches is an error naming it: a map never passes over weights it does not know."""
    compiled = [(re.compile(p), target) for p, target in rules]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        rule = next(((p, t) for p, t in compiled if p.fullmatch(key)), None)
        if rule is None:
            raise UserError(f"{where}: unexpected key {key} (no rule of the key map covers it)")
        if rule[1] is not None:
            out[rule[0].sub(rule[1], key)] = value
    return out


def load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str | Path) -> None:
    """Load `state` into `model` exactly: every parameter and persistent buffer present with its shape, nothing
    more. The tensors are cast to the model's dtypes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise UserError(f"{where}: missing key {missing[0]} (the model needs it; {len(missing)} missing in all)")
    extra = [k for k in state if k not in own]
    if extra:
        raise UserError(f"{where}: unexpected key {extra[0]} (the model has no such weight; {len(extra)} in all)")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise UserError(
                f"{where}: key {key} has shape {tuple(value.shape)}, the model's is {tuple(own[key].shape)}"
            )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


class _StandIn(torch.nn.Module):
    """Takes the place of a pickled module's own class: nn.Module's unpickling restores its parameters, buffers and
    submodules, which is all a state dict needs."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # never called: only state_dict() is read
        raise RuntimeError("a stand-in for a pickled module's class cannot run")


def unpickle_state_dict(path: str | Path, stand_in: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """The state dict of a file written by torch.save(module) (or of a pickled state dict). UNSAFE: unpickling runs
    code from the file; call it only when the user asked for it by name. Classes named in `stand_in` (the release's
    own classes, which are not importable here) are read as plain modules."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if name in stand_in:
                return _StandIn
            return super().find_class(module, name)

    pickle_module = ModuleType("stand_in_pickle")  # what torch.load asks of a pickle module: Unpickler, load
    pickle_module.Unpickler, pickle_module.load = Unpickler, pickle.load
    obj = torch.load(Path(path), map_location="cpu", weights_only=False, pickle_module=pickle_module)
    if isinstance(obj, torch.nn.Module):
        return dict(obj.state_dict())
    if isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    raise UserError(f"{path}: holds a {type(obj).__name__}, neither a module nor a state dict")

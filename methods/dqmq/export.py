"""Per-layer bit-widths per quality level as JSON, and reading them back.

A DQMQ model chooses per input, so a level's export is the most frequent configuration of its test images: for every
layer the weight and activation bits, with `agreement`, the share of the level's images whose whole configuration is
that one (1.0 for fixed and static models, whose choice never varies), and per-layer counts of every candidate.
`eval.bits_json=<file>` runs each level at its exported configuration: a lookup-table deployment keyed by the quality
level, which gives the model's own predictions on the images that agreed.

    {"method": "dqmq", "candidates": [2, 3, 4, 6, 8],
     "layers": [{"name": "0", "macs": 36864.0}, ...],
     "levels": {"clean": {"weight_bits": [8, 6, ...], "act_bits": [...], "agreement": 0.97, "n": 540,
                          "weight_counts": [{"2": 0, "3": 0, ...}, ...], "act_counts": [...]}, ...}}
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from common.errors import UserError
from methods.dqmq.data import at_level
from methods.dqmq.model import QuantModel


@torch.no_grad()
def level_choices(model: QuantModel, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's candidate indices [N, L, 2] for images x."""
    parts = [torch.stack(model.decide(x[i : i + batch_size]), dim=-1) for i in range(0, len(x), batch_size)]
    return torch.cat(parts)


def export_bits(model: QuantModel, levels, test_x: torch.Tensor, seed: int, batch_size: int, method: str) -> dict:
    model.eval()
    cand = model.candidates.tolist()
    out = {
        "method": method,
        "candidates": cand,
        "layers": [{"name": n, "macs": float(m)} for n, m in zip(model.layer_names, model.macs, strict=True)],
        "levels": {},
    }
    for level in levels:
        idx = level_choices(model, at_level(test_x, level, seed), batch_size)
        configs, counts = torch.unique(idx.flatten(1), dim=0, return_counts=True)
        mode = configs[counts.argmax()].view(-1, 2)
        hist = torch.stack([(idx == k).sum(0) for k in range(len(cand))], dim=-1)  # [L, 2, K]
        out["levels"][level.name] = {
            "weight_bits": [cand[k] for k in mode[:, 0].tolist()],
            "act_bits": [cand[k] for k in mode[:, 1].tolist()],
            "agreement": float(counts.max()) / len(idx),
            "n": len(idx),
            "weight_counts": [dict(zip(map(str, cand), h.tolist(), strict=True)) for h in hist[:, 0]],
            "act_counts": [dict(zip(map(str, cand), h.tolist(), strict=True)) for h in hist[:, 1]],
        }
    return out


def read_bits(path: str | Path, model: QuantModel, levels) -> dict[str, torch.Tensor]:
    """Level name -> candidate indices [L, 2] of the model, from an export's JSON; errors name the file, the level and
    the layer."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"eval.bits_json={path}: cannot read it ({str(e).splitlines()[0]})") from None
    cand = model.candidates.tolist()
    n_layers = len(model.layer_names)
    out = {}
    for level in levels:
        entry = data.get("levels", {}).get(level.name)
        if entry is None:
            raise UserError(f"{path}: no entry for quality level '{level.name}' under 'levels'")
        idx = []
        for key in ("weight_bits", "act_bits"):
            bits = entry.get(key)
            if not isinstance(bits, list) or len(bits) != n_layers:
                raise UserError(f"{path}: levels.{level.name}.{key} must list {n_layers} bit-widths, one per layer")
            for layer, b in enumerate(bits):
                if b not in cand:
                    raise UserError(
                        f"{path}: levels.{level.name}.{key}[{layer}] ({model.layer_names[layer]}) = {b}: "
                        f"not a candidate of this model ({', '.join(map(str, cand))})"
                    )
            idx.append([cand.index(b) for b in bits])
        out[level.name] = torch.tensor(idx).T
    return out

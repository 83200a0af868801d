"""common/released.py on checkpoints written here in the layouts transformers publishes (model.safetensors.index.json
with its shards, a single pytorch_model.bin): read whole, renamed by an explicit map, loaded strictly."""

from __future__ import annotations

import json

import pytest
import torch

from common.errors import UserError
from common.released import load_strict, read_state_dict, remap


def test_a_sharded_safetensors_release_is_read_whole(tmp_path):
    from safetensors.torch import save_file

    save_file({"a.weight": torch.ones(2, 3)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b.bias": torch.zeros(2)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    weight_map = {"a.weight": "model-00001-of-00002.safetensors", "b.bias": "model-00002-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    torch.save({"ignored": torch.ones(1)}, tmp_path / "pytorch_model.bin")  # safetensors come first
    state = read_state_dict(tmp_path)
    assert set(state) == {"a.weight", "b.bias"} and torch.equal(state["a.weight"], torch.ones(2, 3))


def test_the_map_renames_drops_and_names_what_it_does_not_cover(tmp_path):
    state = {"old.0.weight": torch.ones(1), "lm_head.weight": torch.ones(1)}
    rules = [(r"old\.(\d+)\.weight", r"new.\1.weight"), (r"lm_head\.weight", None)]
    assert list(remap(state, rules, "ckpt")) == ["new.0.weight"]
    with pytest.raises(UserError, match=r"ckpt: unexpected key stray.bias \(no rule"):
        remap({**state, "stray.bias": torch.ones(1)}, rules, "ckpt")


@pytest.mark.parametrize(
    "state, message",
    [
        ({"weight": torch.ones(2, 3)}, r"ckpt: missing key bias"),
        ({"weight": torch.ones(2, 3), "bias": torch.ones(2), "extra": torch.ones(1)}, r"ckpt: unexpected key extra"),
        (
            {"weight": torch.ones(3, 2), "bias": torch.ones(2)},
            r"ckpt: key weight has shape \(3, 2\), the model's is \(2, 3\)",
        ),
    ],
)
def test_a_strict_load_names_the_key(state, message):
    with pytest.raises(UserError, match=message):
        load_strict(torch.nn.Linear(3, 2), state, "ckpt")


def test_a_strict_load_casts_to_the_models_dtype():
    model = torch.nn.Linear(3, 2)
    load_strict(model, {"weight": torch.ones(2, 3, dtype=torch.float16), "bias": torch.zeros(2)}, "ckpt")
    assert model.weight.dtype == torch.float32 and float(model.weight.sum()) == 6

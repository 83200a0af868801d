"""Exported bit-widths: written per quality level, read back (from the model saved on disk too), they give the same
predictions; a hand-written export with a wrong entry is refused naming the file, the level and the layer."""

from __future__ import annotations

import json
import re

import pytest
import torch

from common.checkpoint import load_module, save_module
from common.errors import UserError
from methods.dqmq.data import Level, at_level
from methods.dqmq.export import export_bits, level_choices, read_bits
from tests.dqmq.conftest import tiny_model

LEVELS = [Level("clean"), Level("gaussian_noise", 5), Level("downsample", 3)]


def _images() -> torch.Tensor:
    torch.manual_seed(0)
    return (torch.rand(48, 1, 12, 12) * 255).to(torch.uint8)


def _predict(model, x, bits=None):
    with torch.no_grad():
        if bits is None:
            return model(x).argmax(1)
        w, a = (b.expand(len(x), -1) for b in bits.unbind(1))
        return model(x, bits=(w, a)).argmax(1)


def _kwargs(method: str) -> dict:
    return dict(
        arch="digits_cnn",
        num_classes=10,
        in_chans=1,
        image_size=12,
        method=method,
        candidates=[2, 4, 8],
        mean=[0.3],
        std=[0.3],
        width=4,
    )


@pytest.mark.parametrize("method", ["static", "dqmq"])
def test_exported_bits_reload_and_give_the_same_predictions(tmp_path, method):
    model = tiny_model(method)
    if method == "static":
        model.choice.copy_(torch.tensor([[0, 2], [1, 1], [2, 0], [0, 0], [1, 2]]))
        model.searched.fill_(True)
    x_u8 = _images()
    exported = export_bits(model, LEVELS, x_u8, seed=0, batch_size=16, method=method)
    path = tmp_path / "bits.json"
    path.write_text(json.dumps(exported))
    save_module(model, tmp_path / "model", "dqmq.model", "quant", _kwargs(method))
    reloaded, _ = load_module(tmp_path / "model")
    bits = read_bits(path, reloaded, LEVELS)

    agreements = []
    for level in LEVELS:
        x = at_level(x_u8, level, 0)
        entry = exported["levels"][level.name]
        idx = level_choices(model, x, 16)
        configs, counts = torch.unique(idx.flatten(1), dim=0, return_counts=True)
        mode = configs[counts.argmax()].view(-1, 2)  # the most frequent configuration, found here independently
        assert torch.equal(bits[level.name], mode)
        assert entry["weight_bits"] == [[2, 4, 8][k] for k in mode[:, 0].tolist()]
        assert sum(entry["weight_counts"][0].values()) == entry["n"] == 48
        from_json = _predict(reloaded, x, bits[level.name])
        assert torch.equal(from_json, _predict(model, x, mode))  # the export reloaded == the configuration in memory
        agree = (idx == mode).flatten(1).all(1)
        assert entry["agreement"] == pytest.approx(float(agree.float().mean()))
        assert torch.equal(from_json[agree], _predict(model, x)[agree])  # == the model's own choice where it agreed
        agreements.append(entry["agreement"])
    if method == "static":
        assert agreements == [1.0] * len(LEVELS)  # one configuration for every input: the same predictions throughout
    else:
        assert min(agreements) < 1.0  # the per-input policy really varies, so the check above is not vacuous


def test_a_hand_written_export_with_a_wrong_entry_is_refused(tmp_path):
    model = tiny_model("fixed", candidates=[4])
    good = {"weight_bits": [4] * 5, "act_bits": [4] * 5}
    path = tmp_path / "bits.json"
    cases = [
        ({"levels": {"clean": good}}, "no entry for quality level 'gaussian_noise-5'"),
        (
            {"levels": {lv.name: good for lv in LEVELS} | {"clean": {**good, "act_bits": [4, 4, 8, 4, 4]}}},
            "levels.clean.act_bits[2] (6) = 8: not a candidate of this model (4)",
        ),
        (
            {"levels": {lv.name: good for lv in LEVELS} | {"clean": {**good, "weight_bits": [4, 4]}}},
            "levels.clean.weight_bits must list 5 bit-widths, one per layer",
        ),
    ]
    for data, message in cases:
        path.write_text(json.dumps(data))
        with pytest.raises(UserError, match=re.escape(f"{path}: {message}")):
            read_bits(path, model, LEVELS)
    path.write_text("{not json")
    with pytest.raises(UserError, match="cannot read it"):
        read_bits(path, model, LEVELS)

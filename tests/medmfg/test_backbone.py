"""Backbones by name: Conv-4, and a timm model with weights from a local file (the real loading path, offline)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from common.errors import UserError
from methods.medmfg.backbone import augment, conv4, timm_model, to_tensor


def test_conv4_and_input_pipeline():
    model = conv4(width=8).eval()
    x = torch.stack([to_tensor(torch.randint(0, 255, (s, s, 3), dtype=torch.uint8).numpy(), 32) for s in (8, 40)])
    assert x.shape == (2, 3, 32, 32)
    assert model(x).shape == (2, 8) and (model(x) >= 0).all()  # ReLU then average pooling: non-negative, as Tukey needs
    assert augment(x).shape == x.shape


def test_timm_backbone_loads_a_local_weights_file(tmp_path):
    torch.manual_seed(0)
    reference = timm_model("resnet10t").eval()
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file({**state, "fc.weight": torch.zeros(3, 512)}, tmp_path / "w.safetensors")  # a head is ignored
    torch.save(state, tmp_path / "w.pth")
    x = torch.randn(2, 3, 32, 32)
    for file in ("w.safetensors", "w.pth"):
        loaded = timm_model("resnet10t", weights=str(tmp_path / file)).eval()
        torch.testing.assert_close(loaded(x), reference(x))
    save_file({"conv1.0.weight": state["conv1.0.weight"]}, tmp_path / "part.safetensors")
    with pytest.raises(UserError, match="backbone tensors missing"):
        timm_model("resnet10t", weights=str(tmp_path / "part.safetensors"))

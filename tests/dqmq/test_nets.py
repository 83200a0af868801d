"""Every registered network builds, swaps in the quantized layers and runs at a small size, with MACs from its shapes."""

from __future__ import annotations

import pytest
import torch

from methods.dqmq.model import QuantModel
from methods.dqmq.quant import QuantLinear


@pytest.mark.parametrize(
    "arch, chans, size, layers",
    [("digits_cnn", 1, 12, 5), ("resnet20", 3, 16, 22), ("resnet18", 3, 32, 21), ("mobilenetv2_100", 3, 32, 53)],
)
def test_networks_build_quantize_and_run(arch, chans, size, layers):
    torch.manual_seed(0)
    model = QuantModel(
        arch=arch,
        num_classes=7,
        in_chans=chans,
        image_size=size,
        method="dqmq",
        candidates=[2, 8],
        mean=[0.5] * chans,
        std=[0.25] * chans,
        width=8,
    )
    assert len(model.layers) == layers and (model.macs > 0).all()
    x = torch.rand(3, chans, size, size)
    model.policy.fit_features(x)
    shapes = {}
    for layer in model.layers:
        layer.register_forward_hook(lambda m, i, o: shapes.__setitem__(m, o.shape))
    model.train()
    out = model(x, bits=(torch.randint(0, 2, (3, layers)), torch.randint(0, 2, (3, layers))))
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    for layer, macs in zip(model.layers, model.macs.tolist(), strict=True):
        out_shape = shapes[layer]
        if isinstance(layer, QuantLinear):
            per_output = layer.in_features
        else:  # a convolution: (in_channels / groups) x kernel area per output element
            per_output = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
        assert macs == out_shape[1:].numel() * per_output
    if arch == "mobilenetv2_100":  # depthwise: one input channel per output element
        dw = next(layer for n, layer in zip(model.layer_names, model.layers, strict=True) if n.endswith("conv_dw"))
        assert dw.groups == dw.in_channels and dw.macs == shapes[dw][1:].numel() * 9


def test_resnet20_has_the_papers_size():
    from methods.dqmq.nets import resnet20

    params = sum(p.numel() for p in resnet20(num_classes=10, in_chans=3, width=16).parameters())
    assert 0.27e6 < params < 0.28e6  # He et al.: 0.27 M (projection shortcuts add 2.9 k)

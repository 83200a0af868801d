"""LSQ fake quantization: error shrinks with bits, straight-through gradients, per-sample bits, the layer swap."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.errors import UserError
from methods.dqmq.quant import QuantConv2d, QuantLinear, levels, lsq, quant_layers, set_bits, swap_layers


def _round_trip_error(x: torch.Tensor, bits: int, signed: bool) -> float:
    qn, qp, off = levels(bits, signed)
    # the MSE-optimal step for this range, searched on a grid: the best the quantizer can do at `bits`
    steps = torch.linspace(1e-3, 2, 400) * x.abs().max() / max(qp, 1)
    return min(float((lsq(x, s, qn, qp, off) - x).pow(2).mean()) for s in steps)


@pytest.mark.parametrize("signed", [True, False])
def test_round_trip_error_shrinks_as_bits_grow(signed):
    torch.manual_seed(0)
    x = torch.randn(4096) if signed else torch.rand(4096) * 3
    errors = [_round_trip_error(x, b, signed) for b in (1, 2, 3, 4, 6, 8, 12, 16)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-8 < errors[0]


def test_levels_and_one_bit():
    assert levels(4, True) == (-8, 7, 0.0) and levels(4, False) == (0, 15, 0.0) and levels(16, True)[1] == 32767
    q = lsq(torch.tensor([-3.0, -0.1, 0.2, 5.0]), torch.tensor(2.0), *levels(1, True))
    assert q.tolist() == [-1.0, -1.0, 1.0, 1.0]  # binarisation: +-step/2, no zero level


def test_ste_gradients_flow_to_input_weights_and_steps():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    swap_layers(conv, [2, 4])
    layers = quant_layers(conv)
    x = torch.randn(6, 2, 6, 6, requires_grad=True)
    w = torch.tensor([[0, 1], [1, 0], [0, 0], [1, 1], [0, 1], [1, 0]])  # per sample and layer, both bit-widths used
    set_bits(layers, w, 1 - w)
    conv.train()
    conv(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for layer in layers:
        assert layer.weight.grad.abs().sum() > 0
        assert (layer.w_step.grad != 0).all() and (layer.a_step.grad != 0).all()  # both candidates were used
    # outside the clipping range the input gets no gradient (LSQ's straight-through estimate)
    step = torch.tensor(0.5, requires_grad=True)
    v = torch.tensor([0.2, 10.0], requires_grad=True)
    lsq(v, step, -2, 1).sum().backward()
    assert v.grad.tolist() == [1.0, 0.0] and step.grad.item() != 0


def test_per_sample_bits_equal_one_sample_at_a_time():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 25, 3))
    swap_layers(net, [2, 3, 8])
    layers = quant_layers(net)
    x = torch.randn(7, 1, 5, 5)
    net.train()
    set_bits(layers, torch.full((7, 2), 2), torch.full((7, 2), 2))
    net(x)  # initialise the LSQ steps
    net.eval()
    w, a = torch.randint(0, 3, (7, 2)), torch.randint(0, 3, (7, 2))
    set_bits(layers, w, a)
    together = net(x)
    for i in range(7):
        set_bits(layers, w[i : i + 1], a[i : i + 1])
        assert torch.allclose(net(x[i : i + 1]), together[i : i + 1], atol=1e-5)
    # soft bits that are one-hot equal the hard choice
    onehot = torch.eye(3)[[1, 2]]
    set_bits(layers, onehot, torch.eye(3)[[0, 1]], soft=True)
    soft = net(x)
    set_bits(layers, torch.tensor([[1, 2]]).expand(7, -1), torch.tensor([[0, 1]]).expand(7, -1))
    assert torch.allclose(soft, net(x), atol=1e-5)
    assert [layer.macs for layer in layers] == [4 * 25 * 9, 3 * 100]


def test_swap_keeps_weights_and_refuses_unsupported_layers_by_name():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2))
    before = [net[0].weight.clone(), net[3].weight.clone()]
    assert swap_layers(net, [4, 8]) == ["0", "3"]
    assert isinstance(net[0], QuantConv2d) and isinstance(net[3], QuantLinear) and isinstance(net[1], nn.BatchNorm2d)
    assert torch.equal(net[0].weight, before[0]) and torch.equal(net[3].weight, before[1])

    class SameConv(nn.Conv2d):  # a subclass with its own forward (as timm's Conv2dSame)
        def forward(self, x):
            return super().forward(x)

    for bad, kind in ((nn.Conv1d(1, 2, 3), "Conv1d"), (SameConv(1, 2, 3), "SameConv"), (nn.LSTM(4, 4), "LSTM")):
        model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), bad))
        with pytest.raises(
            UserError, match=rf"layer '1\.1' \({kind}\) is not supported; supported types: Conv2d, Linear"
        ):
            swap_layers(model, [4])
        assert type(model[0]) is nn.Linear  # refused before anything was swapped

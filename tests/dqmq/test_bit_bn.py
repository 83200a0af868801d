"""Bit-specific BatchNorm (quant.bit_bn): one BatchNorm per weight/activation bit pair of the layer before it. A batch
at two pairs trains exactly two statistics sets, each from its own samples only; the full-precision network's
BatchNorm loads into every pair and stays as it was; the ONNX export folds the configured pair's BatchNorm."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import torch
from torch import nn

from methods.dqmq.bit_bn import BitBatchNorm2d
from methods.dqmq.onnx_export import OnnxDeployment, agreement, export_onnx, network_graph
from tests.dqmq.conftest import tiny_model


def _bit_bns(model) -> list[BitBatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, BitBatchNorm2d)]


def test_default_is_one_shared_batchnorm():
    model = tiny_model("dqmq")
    assert not _bit_bns(model) and sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 4


def test_a_batch_at_two_bit_pairs_trains_two_separate_statistics_sets():
    fp = tiny_model("fp")
    with torch.no_grad():  # a full-precision network with statistics of its own
        for bn in (m for m in fp.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-1, 1)
            bn.weight.uniform_(0.5, 2)
    fp_state = copy.deepcopy(fp.net.state_dict())
    model = tiny_model("fixed", candidates=[2, 4, 8], bit_bn=True)
    model.net.load_state_dict(fp.net.state_dict(), strict=False)
    first = _bit_bns(model)[0]
    assert len(first.bns) == 9 and all(torch.equal(b.running_mean, fp.net[1].running_mean) for b in first.bns)

    x = torch.rand(12, 1, 12, 12)
    n = len(model.layers)
    pair_a, pair_b = (0, 1), (2, 2)  # W2A4 for the first half of the batch, W8A8 for the second
    w = torch.tensor([pair_a[0]] * 6 + [pair_b[0]] * 6)[:, None].expand(-1, n)
    a = torch.tensor([pair_a[1]] * 6 + [pair_b[1]] * 6)[:, None].expand(-1, n)
    alone = copy.deepcopy(model).train()
    model.train()
    out = model(x, bits=(w, a))
    # Each half normalised by its own pair's batch statistics: the same as running the halves apart.
    halves = torch.cat([alone(x[:6], bits=(w[:6], a[:6])), alone(x[6:], bits=(w[6:], a[6:]))])
    torch.testing.assert_close(out, halves)
    for bit_bn, twin in zip(_bit_bns(model), _bit_bns(alone), strict=True):
        for p, bn in enumerate(bit_bn.bns):
            trained = p in (pair_a[0] * 3 + pair_a[1], pair_b[0] * 3 + pair_b[1])
            assert int(bn.num_batches_tracked) == int(trained)
            torch.testing.assert_close(bn.running_mean, twin.bns[p].running_mean)
            torch.testing.assert_close(bn.running_var, twin.bns[p].running_var)
    # Untrained pairs keep the full-precision statistics; the full-precision network itself is untouched.
    assert torch.equal(first.pair(1, 1).running_mean, fp.net[1].running_mean)
    assert not torch.equal(first.pair(*pair_a).running_mean, fp.net[1].running_mean)
    assert all(torch.equal(v, fp_state[k]) for k, v in fp.net.state_dict().items())


def _distinct_pairs(model) -> None:
    """Give every pair's BatchNorm its own statistics and affine parameters (as if trained apart), within 20% of the
    shared ones so that the network's activations stay in the ranges its LSQ steps were set for."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bn in (m for b in _bit_bns(model) for m in b.bns):
            jitter = 0.2 * (2 * torch.rand(4, bn.num_features, generator=g) - 1)
            bn.running_mean.add_(jitter[0] * bn.running_var.sqrt())
            bn.running_var.mul_(1 + jitter[1])
            bn.weight.mul_(1 + jitter[2])
            bn.bias.add_(jitter[3])


def _folded_weight_scales(graph: onnx.ModelProto) -> list[np.ndarray]:
    """Per-channel scale of each layer's stored weight integers, in graph order (step x the folded BN factor)."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.graph.initializer}
    return [
        inits[nd.input[1]]
        for nd in graph.graph.node
        if nd.op_type == "DequantizeLinear" and nd.input[0].startswith("w_q")
    ]


def test_onnx_folds_the_configured_pairs_batchnorm(tmp_path):
    model = tiny_model("dqmq", bit_bn=True)
    _distinct_pairs(model)
    config = ([0, 1, 2, 0, 1], [1, 2, 0, 2, 1])  # a different pair in every layer
    graph = network_graph(model, config, "t")
    onnx.checker.check_model(graph)
    assert [nd.op_type for nd in graph.graph.node].count("BatchNormalization") == 0
    scales = _folded_weight_scales(graph)
    for layer, bit_bn, w, a, scale in zip(model.layers, _bit_bns(model), *config, scales, strict=False):
        for p, bn in enumerate(bit_bn.bns):
            factor = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().numpy()
            expected = float(layer.w_step[w].detach().abs()) * factor
            assert np.allclose(scale, expected, rtol=1e-5) == (p == w * 3 + a), (w, a, p)
    x = (torch.rand(96, 1, 12, 12, generator=torch.Generator().manual_seed(0)) * 255).round() / 255
    export_onnx(model, tmp_path, x, 1000, "dqmq")  # the router and every configuration the policy picks
    check = agreement(model, OnnxDeployment(tmp_path), x)
    assert check["exact_config"] == 1.0 and check["agreement"] >= 0.98

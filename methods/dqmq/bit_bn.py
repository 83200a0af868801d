"""Bit-specific BatchNorm: one BatchNorm (statistics and affine parameters) per (weight bits, activation bits) pair of
the quantized layer before it, as switchable-precision / any-precision networks keep one BN per precision (their
switchable BN holds a full BatchNorm2d, affine included, per bit-width; per pair where weights and activations vary
apart). A layer's output statistics shift with its bits, so one shared set of statistics fits none of them exactly.

Every pair starts as a copy of the BatchNorm it replaces (a plain BatchNorm's saved state loads into every pair), and
a sample is normalised by its own pair's BatchNorm: the samples of a batch are grouped by pair, as the quantized
layers group them by weight bits, so in training each pair's running statistics see only its own samples.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from methods.dqmq.quant import _Quantized

_BN_STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class BitBatchNorm2d(nn.Module):
    def __init__(self, bn: nn.BatchNorm2d, source: _Quantized):
        super().__init__()
        self.k = len(source.candidates)
        self.bns = nn.ModuleList(copy.deepcopy(bn) for _ in range(self.k * self.k))  # index w * k + a
        # The layer whose bits pick the pair; in a list so that it is not registered (and saved) a second time.
        self._source = [source]
        self.register_load_state_dict_pre_hook(_expand_plain_state)

    def pair(self, w: int, a: int) -> nn.BatchNorm2d:
        """The BatchNorm of candidate indices (w, a) of the source layer."""
        return self.bns[w * self.k + a]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bits = self._source[0].bits
        if bits.soft:  # EdMIPS's search mixes every candidate: the most probable pair normalises the batch
            return self.pair(int(bits.w.argmax()), int(bits.a.argmax()))(x)
        idx = bits.w * self.k + bits.a
        if bool((idx == idx[0]).all()):
            return self.bns[int(idx[0])](x)
        order = torch.argsort(idx, stable=True)
        ks, counts = torch.unique_consecutive(idx[order], return_counts=True)
        parts = [self.bns[int(p)](chunk) for p, chunk in zip(ks.tolist(), x[order].split(counts.tolist()), strict=True)]
        return torch.cat(parts)[torch.argsort(order)]


def _expand_plain_state(module: BitBatchNorm2d, state: dict, prefix: str, *_) -> None:
    """A plain BatchNorm's keys (the full-precision network's) are loaded into every pair."""
    for name in _BN_STATE:
        if prefix + name in state:
            value = state.pop(prefix + name)
            for p in range(len(module.bns)):
                state[f"{prefix}bns.{p}.{name}"] = value.clone()


def swap_batchnorm(net: nn.Module, run: Callable[[], None]) -> int:
    """Replace (in place) every BatchNorm2d of `net` that follows a quantized layer by a BitBatchNorm2d tied to that
    layer: the one that ran last before it in one forward (`run`, bits set). Returns how many were replaced."""
    calls: list[nn.Module] = []
    hooks = [
        m.register_forward_pre_hook(lambda m, _: calls.append(m))
        for m in net.modules()
        if isinstance(m, (_Quantized, nn.BatchNorm2d))
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    source, last = {}, None
    for m in calls:
        if isinstance(m, _Quantized):
            last = m
        elif last is not None:
            source[m] = last
    names = {m: n for n, m in net.named_modules()}
    for bn, layer in source.items():
        parent, _, child = names[bn].rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, child, BitBatchNorm2d(bn, layer))
    return len(source)

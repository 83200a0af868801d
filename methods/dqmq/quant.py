"""LSQ fake quantization at any bit-width of a candidate set, for weights and activations, and the swap that puts it
into a model's Conv2d / Linear layers.

A quantized layer keeps one learned step size per candidate bit-width for its weights and one for its input
activations (LSQ, Esser et al. 2020: round to the nearest level with a straight-through estimator, the step's gradient
scaled by 1/sqrt(numel * Qp)). Before each forward it is told which bits to use (`set_bits`):

- hard, per sample: an index into the candidates for every sample of the batch (DQMQ's per-input choice, the fixed
  baselines, a searched static configuration). Activations are quantized per sample in one vectorised pass; the
  samples are grouped by weight bit-width, so the layer runs once per weight bit-width present in the batch and the
  multiply-accumulate work equals that of one full-batch pass.
- soft, shared by the batch: a probability per candidate, the output of EdMIPS's search (weights and activations are
  the probability-weighted sums of their quantized versions).

Every forward records the layer's multiply-accumulates per sample from the actual shapes (`macs`), which is what the
bit-operation counts are made of: BitOps = MACs x weight bits x activation bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError

SUPPORTED = (nn.Conv2d, nn.Linear)
# Layers that do multiply-accumulate work: any of them that is not exactly a supported type is refused by the swap,
# rather than left silently in float (normalisation layers stay in float, as usual in QAT).
COMPUTE = (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear, nn.RNNBase, nn.MultiheadAttention, nn.Embedding)


def levels(bits: int, signed: bool) -> tuple[int, int, float]:
    """(Qn, Qp, offset) of b-bit integers: signed [-2^(b-1), 2^(b-1)-1], unsigned [0, 2^b-1]. A signed 1-bit code
    has no room for zero, so it is the mid-rise pair {-1/2, +1/2} (offset 1/2), i.e. binarisation."""
    if not signed:
        return 0, 2**bits - 1, 0.0
    if bits == 1:
        return -1, 0, 0.5
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1, 0.0


class _LSQ(torch.autograd.Function):
    """round(clamp(x / s - offset, Qn, Qp)) + offset, times s, with LSQ's gradients in one node: the
    straight-through estimate for x inside the range (zero outside), and for s the rounding error inside, the clipped
    level outside, times the gradient scale, summed to s's shape (a number, or one step per sample)."""

    @staticmethod
    def forward(ctx, x, step, qn, qp, offset, grad_scale):
        v = x / step - offset
        q = torch.clamp(v, qn, qp)
        inside = q == v
        q = q.round()
        ctx.save_for_backward(v, q, inside, step)
        ctx.offset, ctx.grad_scale = offset, grad_scale
        return (q + offset) * step

    @staticmethod
    def backward(ctx, g):
        v, q, inside, step = ctx.saved_tensors
        grad_x = g * inside  # d/dx of (x/s) * s inside the range
        ds = g * torch.where(inside, q - v, q + ctx.offset)
        dims = [d for d in range(ds.dim()) if step.dim() == 0 or step.shape[d] == 1]
        grad_step = (ds.sum(dims, keepdim=step.dim() > 0) * ctx.grad_scale).view_as(step)
        return grad_x, grad_step, None, None, None, None


def lsq(x: torch.Tensor, step: torch.Tensor, qn, qp, offset=0.0, grad_scale=1.0) -> torch.Tensor:
    """x quantized with a positive `step` to the integer range [qn, qp] (numbers, or tensors that broadcast against
    x: per sample); `offset` shifts the levels by a fraction of a step (1-bit), `grad_scale` scales step's gradient."""
    return _LSQ.apply(x, step, qn, qp, offset, grad_scale)


def _scale_grad(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    return (x - x * scale).detach() + x * scale


def _positive(step: torch.Tensor) -> torch.Tensor:
    return step.abs().clamp_min(1e-8)


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


@dataclass
class LayerBits:
    """What a quantized layer runs at: candidate indices per sample ([N], hard) or probabilities per candidate ([K],
    soft, shared by the batch)."""

    w: torch.Tensor
    a: torch.Tensor
    soft: bool = False


class _Quantized:
    """The quantization shared by QuantConv2d and QuantLinear (mixed into the torch layer, whose op it reuses)."""

    def _setup(self, candidates: list[int]) -> None:
        k = len(candidates)
        self.register_buffer("candidates", torch.tensor(candidates, dtype=torch.long))
        self.w_step = nn.Parameter(torch.ones(k))
        self.a_step = nn.Parameter(torch.ones(k))
        # Whether inputs can be negative and whether the steps were set from data: saved with the weights.
        self.register_buffer("a_signed", torch.tensor(False))
        self.register_buffer("initialized", torch.tensor(False))
        self.w_levels = [levels(b, True) for b in candidates]
        # (Qn, Qp, offset) per candidate for unsigned / signed inputs, gathered per sample in the forward.
        for signed in (False, True):
            table = torch.tensor([levels(b, signed) for b in candidates], dtype=torch.float).T
            self.register_buffer(f"a_levels_{int(signed)}", table, persistent=False)
        self.bits: LayerBits | None = None
        self.macs = 0  # multiply-accumulates per sample, from the last forward's shapes

    @torch.no_grad()
    def _init_steps(self, x: torch.Tensor) -> None:
        """LSQ's initialisation, s = 2 mean|v| / sqrt(Qp), per candidate, from the weights and the first batch."""
        self.a_signed.fill_(bool((x < 0).any()))
        qp_w = torch.tensor([qp for _, qp, _ in self.w_levels], dtype=torch.float, device=x.device)
        self.w_step.copy_(2 * self.weight.abs().mean() / qp_w.clamp_min(1).sqrt())
        qp_a = self._a_levels()[1]
        self.a_step.copy_(2 * x.abs().mean() / qp_a.clamp_min(1).sqrt())
        self.initialized.fill_(True)

    def _a_levels(self) -> torch.Tensor:
        return self.a_levels_1 if bool(self.a_signed) else self.a_levels_0

    def _quant_weight(self, k: int) -> torch.Tensor:
        qn, qp, off = self.w_levels[k]
        return lsq(self.weight, _positive(self.w_step[k]), qn, qp, off, 1 / math.sqrt(self.weight.numel() * max(qp, 1)))

    def _quant_input(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Per-sample bits a [N] (candidate indices): per-sample step sizes and integer ranges, one pass."""
        qn, qp, off = self._a_levels()
        step = _scale_grad(_positive(self.a_step), (x[0].numel() * qp.clamp_min(1)).rsqrt())  # LSQ's g per candidate
        if bool((a == a[0]).all()):  # one bit-width for the whole batch (fixed, static): numbers, not per-sample
            k = int(a[0])
            return lsq(x, step[k], float(qn[k]), float(qp[k]), float(off[k]))
        return lsq(x, _per_sample(step[a], x), _per_sample(qn[a], x), _per_sample(qp[a], x), _per_sample(off[a], x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits is None:
            raise RuntimeError(f"{type(self).__name__}: bits not set (call set_bits before the forward)")
        if self.training and not self.initialized:
            self._init_steps(x)
        bits = self.bits
        if bits.soft:  # EdMIPS: probability-weighted sums of every candidate's quantization
            k = len(self.candidates)
            xq = sum(bits.a[i] * self._quant_input(x, torch.full((len(x),), i, device=x.device)) for i in range(k))
            out = self._op(xq, sum(bits.w[i] * self._quant_weight(i) for i in range(k)))
        else:
            xq = self._quant_input(x, bits.a)
            out = self._grouped(xq, bits.w)
        self.macs = out[0].numel() * self.weight[0].numel()
        return out

    def _grouped(self, x: torch.Tensor, w_idx: torch.Tensor) -> torch.Tensor:
        """One pass per weight bit-width present: samples sorted by it, run in contiguous groups, put back in order."""
        first = int(w_idx[0])
        if bool((w_idx == first).all()):
            return self._op(x, self._quant_weight(first))
        order = torch.argsort(w_idx, stable=True)
        sorted_idx = w_idx[order]
        ks, counts = torch.unique_consecutive(sorted_idx, return_counts=True)
        parts = [
            self._op(chunk, self._quant_weight(int(k)))
            for k, chunk in zip(ks.tolist(), x[order].split(counts.tolist()), strict=True)
        ]
        return torch.cat(parts)[torch.argsort(order)]


class QuantConv2d(_Quantized, nn.Conv2d):
    def _op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, weight, self.bias)


class QuantLinear(_Quantized, nn.Linear):
    def _op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, self.bias)


def _quantized_copy(layer: nn.Module, candidates: list[int]) -> nn.Module:
    if type(layer) is nn.Conv2d:
        new = QuantConv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            layer.bias is not None,
            layer.padding_mode,
        )
    else:
        new = QuantLinear(layer.in_features, layer.out_features, layer.bias is not None)
    new.load_state_dict(layer.state_dict())
    new._setup(candidates)
    return new.to(layer.weight.device)


def swap_layers(model: nn.Module, candidates: list[int]) -> list[str]:
    """Replace every Conv2d / Linear of `model` (in place) by its quantized twin with the same weights; returns the
    names of the quantized layers in forward-definition order. Any other layer that does multiply-accumulate work
    (Conv1d, ConvTranspose2d, a Conv2d subclass with its own forward, attention, ...) is refused by name."""
    for name, module in model.named_modules():
        if isinstance(module, COMPUTE) and type(module) not in SUPPORTED:
            supported = ", ".join(t.__name__ for t in SUPPORTED)
            raise UserError(
                f"quantization: layer '{name}' ({type(module).__name__}) is not supported; supported types: "
                f"{supported} (exactly these classes; subclasses with their own forward are not)"
            )
    names = []
    for name, module in list(model.named_modules()):
        if type(module) in SUPPORTED:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, _quantized_copy(module, candidates))
            names.append(name)
    if not names:
        raise UserError(
            f"quantization: the model has no {' or '.join(t.__name__ for t in SUPPORTED)} layer to quantize"
        )
    return names


def quant_layers(model: nn.Module) -> list[_Quantized]:
    return [m for m in model.modules() if isinstance(m, _Quantized)]


def set_bits(layers: list[_Quantized], w: torch.Tensor, a: torch.Tensor, soft: bool = False) -> None:
    """Hard: w, a are candidate indices [N, L] (sample, layer). Soft: probabilities [L, K] shared by the batch."""
    for i, layer in enumerate(layers):
        layer.bits = LayerBits(w[i], a[i], soft) if soft else LayerBits(w[:, i], a[:, i])


def bitops(macs: torch.Tensor, wbits: torch.Tensor, abits: torch.Tensor) -> torch.Tensor:
    """Bit operations per sample: sum over layers of MACs x weight bits x activation bits. `wbits`/`abits` are bits
    [..., L] (or expected bits under a distribution: with weight and activation bits chosen independently,
    E[bw * ba] = E[bw] E[ba], so the same formula gives the expected count)."""
    return (macs * wbits * abits).sum(-1)

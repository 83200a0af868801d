"""The matrix product behind M4's large Linear layers (the experts' fused first Linear, ABMIL's first Linear) on CPU.

PyTorch runs a float32 `F.linear` on CPU through its BLAS (MKL in the official wheels), although it also ships oneDNN,
whose matmul can be much faster: on the project's AMD EPYC (Zen 5) machines MKL's sgemm ran at ~107 GFLOP/s per core
and oneDNN's at ~215, forward and weight gradient alike. Which one wins depends on the CPU, so `auto` times both once
per process and thread count on a bag-sized product and keeps the faster (`chosen()` says which); the results agree to
float32 rounding. CUDA, float64 and inputs that are not [N, F] matrices always use `F.linear`.
"""

from __future__ import annotations

import functools
import time

import torch
import torch.nn.functional as F
from torch import nn

from methods.m4.config import GEMMS

_setting = "auto"
_measured: dict[int, str] = {}  # thread count -> the faster GEMM there


def use(setting: str) -> None:
    """Select the CPU GEMM (`train.cpu_gemm`) for this process."""
    global _setting
    if setting not in GEMMS:
        raise ValueError(f"gemm {setting!r}: expected one of {', '.join(GEMMS)}")
    _setting = setting


@functools.cache  # asked on every product: the answer never changes within a process
def onednn_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def _mm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b.T (+ bias) through oneDNN's matmul."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _mm(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _mm(grad, weight.t().contiguous())
        if ctx.needs_input_grad[1]:
            # Contiguous transposes: oneDNN's fast path wants dense row-major operands (copying costs ~5% of the GEMM).
            grad_w = _mm(grad.t().contiguous(), x.t().contiguous())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return _OneDNNLinear.apply(x, weight, bias)


def _measure() -> str:
    """The faster GEMM at the current thread count: forward + weight gradient of a 1,024-instance bag through a
    1,024 -> 1,024 layer, best of 3, the two interleaved."""
    best = {"native": float("inf"), "onednn": float("inf")}
    with torch.inference_mode(False), torch.enable_grad():  # the first call may come from an evaluation
        x, w = torch.randn(1024, 1024), torch.randn(1024, 1024, requires_grad=True)
        for _ in range(3):
            for name, fn in (("native", F.linear), ("onednn", _onednn_linear)):
                start = time.perf_counter()
                fn(x, w).sum().backward()
                best[name] = min(best[name], time.perf_counter() - start)
    return min(best, key=best.get)


def chosen() -> str:
    """The GEMM a float32 CPU product uses now (measuring once at this thread count if the setting is auto)."""
    if _setting == "native" or not onednn_available():
        return "native"
    if _setting == "onednn":
        return "onednn"
    threads = torch.get_num_threads()
    if threads not in _measured:
        _measured[threads] = _measure()
    return _measured[threads]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, through oneDNN where that is the chosen CPU GEMM."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 2 and chosen() == "onednn":
        return _onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters and state-dict keys) computed by `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

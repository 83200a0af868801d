"""The CPU GEMM choice behind M4's large layers: oneDNN's product equals F.linear's (values and gradients), the setting
is obeyed, `auto` measures once per thread count, and a model trains the same under either GEMM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.errors import UserError
from common.registry import create
from methods.m4 import kernels
from methods.m4.model import transfer_experts
from methods.m4.train import bce_loss

pytestmark = pytest.mark.skipif(not kernels.onednn_available(), reason="this torch build has no oneDNN matmul")


@pytest.fixture(autouse=True)
def restore_setting(monkeypatch):
    monkeypatch.setattr(kernels, "_setting", "auto")
    monkeypatch.setattr(kernels, "_measured", {})


@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_equals_f_linear_with_gradients(bias):
    torch.manual_seed(0)
    x = torch.randn(37, 20)
    w, b = torch.randn(9, 20), torch.randn(9) if bias else None
    grads = []
    for fn in (F.linear, kernels._onednn_linear):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        bs = b.clone().requires_grad_() if bias else None
        out = fn(xs, ws, bs)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append((out.detach(), xs.grad, ws.grad, bs.grad if bias else torch.zeros(())))
    for expected, got in zip(*grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_the_setting_is_obeyed_and_auto_measures_once_per_thread_count(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels, "_measure", lambda: calls.append(torch.get_num_threads()) or "onednn")
    kernels.use("native")
    assert kernels.chosen() == "native" and calls == []
    kernels.use("onednn")
    assert kernels.chosen() == "onednn" and calls == []
    kernels.use("auto")
    assert kernels.chosen() == kernels.chosen() == "onednn"
    assert calls == [torch.get_num_threads()]
    with pytest.raises(ValueError, match="expected one of auto, native, onednn"):
        kernels.use("mkl")


def test_auto_picks_a_real_backend_and_float64_or_1d_inputs_stay_on_f_linear(monkeypatch):
    assert kernels._measure() in ("native", "onednn")
    kernels.use("onednn")
    used = []
    monkeypatch.setattr(kernels, "_onednn_linear", lambda *a: used.append(a) or F.linear(*a))
    w = torch.randn(3, 4)
    kernels.linear(torch.randn(5, 4, dtype=torch.float64), w.double())
    kernels.linear(torch.randn(4), w)
    assert used == []
    kernels.linear(torch.randn(5, 4), w)
    assert len(used) == 1


def test_m4_training_step_is_the_same_under_both_gemms():
    """Default (batched) M4 and the single-task ABMIL, float32, training mode without dropout randomness (same seed):
    loss and every gradient agree between PyTorch's BLAS and oneDNN."""
    x, y = torch.randn(150, 64), torch.tensor([1.0, 0.0, 1.0])
    for name, kwargs, target in (
        ("m4", {"feat_input": 64, "tasks": 3, "num_expert": 2, "hidden": 32}, y),
        ("amil", {"feat_input": 64, "hidden": 32}, y[:1]),
    ):
        torch.manual_seed(0)
        model = create("m4.model", name, **kwargs)
        results = []
        for gemm in ("native", "onednn"):
            kernels.use(gemm)
            torch.manual_seed(1)  # the same dropout masks
            loss = bce_loss()(model, (x, target))[0]
            loss.backward()
            results.append(
                (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            )
            model.zero_grad(set_to_none=True)
        (loss_n, grads_n), (loss_o, grads_o) = results
        torch.testing.assert_close(loss_o, loss_n, rtol=1e-5, atol=1e-6)
        assert grads_n.keys() == grads_o.keys() and grads_n
        for n in grads_n:
            torch.testing.assert_close(grads_o[n], grads_n[n], rtol=1e-3, atol=1e-5, msg=f"{name}: {n}")


def test_official_layout_round_trip_is_unchanged_by_the_gemm():
    """Weights trained under oneDNN still move to the official layout and give the official form's outputs."""
    kernels.use("onednn")
    torch.manual_seed(2)
    model = create("m4.model", "m4", feat_input=64, tasks=3, num_expert=2, hidden=32).eval()
    x = torch.randn(40, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), transfer_experts(model, batched=False)(x), rtol=1e-5, atol=1e-6)


def test_train_cpu_gemm_is_checked_when_the_config_is_composed():
    from common.config import compose

    assert compose("m4", "train.cpu_gemm=onednn").train.cpu_gemm == "onednn"
    with pytest.raises(UserError, match="cpu_gemm"):
        compose("m4", "train.cpu_gemm=mkl")

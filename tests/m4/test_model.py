"""M4, MMoE and the single-task ABMIL against the official code: parameter counts, shapes, gates, the batched experts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from common.errors import UserError
from common.registry import create, names
from methods.m4 import model as m4model
from methods.m4.model import (
    M4,
    SEGMENTS,
    BatchedMPExperts,
    SequentialMPExperts,
    count_parameters,
    fold_padding,
    pack_experts,
    square_pad,
    transfer_experts,
    unpack_experts,
)

SMALL = {"feat_input": 48, "tasks": 3, "num_expert": 2, "hidden": 32}  # hidden 32: 4 segments of 8 channels


def small(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    args = {**SMALL, **kw}
    if name == "amil":
        args = {"feat_input": args["feat_input"], "hidden": args["hidden"]}
    return build_model(name, **args).eval()


# ---------------------------------------------------------------------------------------------------------------------
# Parameter counts at the official default (2048-d input, 5 experts, 10 tasks, 512 hidden)


def build_model(name: str, **kwargs) -> torch.nn.Module:
    return create("m4.model", name, **kwargs)


def test_registry_lists_the_three_models_and_rejects_others():
    assert {"m4", "mmoe", "amil"} <= set(names("m4.model"))
    with pytest.raises(UserError, match="unknown m4.model 'transmil'"):
        build_model("transmil")


def test_parameter_counts_match_the_official_code():
    assert count_parameters(build_model("m4")) == 7_462_613
    assert count_parameters(build_model("m4", batched=False)) == 7_462_613
    assert count_parameters(build_model("mmoe")) == 6_179_925
    assert count_parameters(build_model("amil")) == 1_312_514


def test_parameter_count_breakdown_of_m4():
    """Per part, as counted from the official models/M4.py: 1,248,517 per expert, 1,055,538 gates, 164,490 towers."""
    model = build_model("m4", batched=False)
    assert [count_parameters(e) for e in model.experts] == [1_248_517] * 5
    assert count_parameters(model.gate1_fc1) + count_parameters(model.gate1_fc2) == 1_055_538
    assert count_parameters(model.towers) == 164_490
    assert len(model.towers) == 10 and len(model.gate1_fc2) == 10


def test_hidden_must_split_into_four_segments():
    with pytest.raises(ValueError, match="4 proxy segments"):
        M4(feat_input=16, hidden=30)


# ---------------------------------------------------------------------------------------------------------------------
# Forward shapes


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 50])
@pytest.mark.parametrize("batched", [True, False])
def test_m4_forward_shapes(n, batched):
    model = small("m4", batched=batched)
    x = torch.randn(n, SMALL["feat_input"])
    probs, attn = model(x, return_attention=True)
    assert probs.shape == (3,)
    assert bool(((probs > 0) & (probs < 1)).all())
    assert attn.shape == (3, n)  # folded back from the padded square grid onto the n real patches
    torch.testing.assert_close(attn.sum(-1), torch.ones(3))
    assert bool((attn >= 0).all())
    torch.testing.assert_close(model(x), probs)  # eval mode: deterministic, return_attention does not change it
    pooled, grid_attn = model.experts(x)
    side = math.ceil(math.sqrt(n))
    assert pooled.shape == (2, SMALL["hidden"]) and grid_attn.shape == (2, side * side)


@pytest.mark.parametrize("n", [1, 3, 7, 50])
def test_mmoe_and_amil_forward_shapes(n):
    x = torch.randn(n, SMALL["feat_input"])
    probs, attn = small("mmoe")(x, return_attention=True)
    assert probs.shape == (3,) and attn.shape == (3, n)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3))
    probs, attn = small("amil")(x, return_attention=True)
    assert probs.shape == (1,) and attn.shape == (1, n)
    assert bool(((probs > 0) & (probs < 1)).all())


@pytest.mark.parametrize("name", ["m4", "mmoe", "amil"])
def test_official_size_forward(name):
    model = build_model(name).eval()
    for n in (1, 10):
        out = model(torch.randn(n, 2048))
        assert out.shape == ((1,) if name == "amil" else (10,))
        assert bool(torch.isfinite(out).all())


def test_training_step_gives_finite_gradients_everywhere_it_should():
    model = small("m4").train()
    x = torch.randn(13, SMALL["feat_input"])
    F.binary_cross_entropy(model(x), torch.tensor([1.0, 0.0, 1.0]), reduction="sum").backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    unused = {n for n in grads if "classifier" in n}  # the experts' classifier is never called, as in the official code
    assert unused and all(grads[n] is None for n in unused)
    assert all(g is not None and bool(torch.isfinite(g).all()) for n, g in grads.items() if n not in unused)


# ---------------------------------------------------------------------------------------------------------------------
# Padding to a square grid and folding the attention back


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 17, 26])
def test_square_pad_repeats_the_first_instances(n):
    h = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3)
    padded, side = square_pad(h)
    assert side == math.ceil(math.sqrt(n)) and padded.shape == (side * side, 3)
    torch.testing.assert_close(padded[:n], h)
    torch.testing.assert_close(padded[n:], h[: side * side - n])


def test_fold_padding_adds_duplicates_to_their_source():
    attn = torch.tensor([[0.1, 0.2, 0.05, 0.05, 0.1, 0.1, 0.1, 0.2, 0.1]])  # n = 7 on a 3x3 grid: 2 duplicates
    folded = fold_padding(attn, 7)
    torch.testing.assert_close(folded, torch.tensor([[0.3, 0.3, 0.05, 0.05, 0.1, 0.1, 0.1]]))
    torch.testing.assert_close(fold_padding(attn[:, :4], 4), attn[:, :4])  # a perfect square: unchanged


# ---------------------------------------------------------------------------------------------------------------------
# Gates


@pytest.mark.parametrize("n", [1, 6, 20])
def test_m4_gates_sum_to_one_per_task_and_segment(n):
    model = small("m4").train()  # no dropout in the gates: they are a proper softmax in training too
    x = torch.randn(n, SMALL["feat_input"]) * 3
    gates = model.gates(x)
    assert gates.shape == (SMALL["tasks"], SEGMENTS, SMALL["num_expert"])
    torch.testing.assert_close(gates.sum(-1), torch.ones(SMALL["tasks"], SEGMENTS))
    assert bool((gates >= 0).all())
    # Gates differ between segments (a softmax per segment, not one shared over the whole vector) and between tasks.
    assert not torch.allclose(gates[:, 0], gates[:, 1])
    assert not torch.allclose(gates[0], gates[1])


def test_m4_gates_use_the_mean_patch_feature_only():
    model = small("m4")
    x = torch.randn(9, SMALL["feat_input"])
    torch.testing.assert_close(model.gates(x), model.gates(x[torch.randperm(9)]))
    torch.testing.assert_close(model.gates(x), model.gates(x.mean(0, keepdim=True)))


def test_mmoe_gates_sum_to_one_per_task():
    model = small("mmoe")
    x = torch.randn(5, SMALL["feat_input"])
    gates = torch.stack([g(x.mean(0)) for g in model.gate1])
    assert gates.shape == (SMALL["tasks"], SMALL["num_expert"])
    torch.testing.assert_close(gates.sum(-1), torch.ones(SMALL["tasks"]))


# ---------------------------------------------------------------------------------------------------------------------
# The official forward pass, written out step by step from models/M4.py, against ours


def _official_expert(ex: m4model.MPExpert, x: torch.Tensor) -> torch.Tensor:
    """MP_AMIL(is_expert=True).forward of the official code, on our expert's weights."""
    h = ex.fc(x)[None]  # [1, N, C]
    n, c = h.shape[1], h.shape[2]
    side = int(math.ceil(math.sqrt(n)))
    h = torch.cat([h, h[:, : side * side - n, :]], dim=1)
    feat = h.transpose(1, 2).reshape(1, c, side, side)  # ConvPosEnc
    h = (ex.cpe.proj(feat) + feat).flatten(2).transpose(1, 2)
    cur = ex.norm1(h).transpose(1, 2).reshape(1, c, side, side)  # Aggregator
    seg = list(torch.split(cur, c // 4, dim=1))
    out = [F.hardswish(seg[0])]
    for agg, part in zip((ex.hierarchical.agg1, ex.hierarchical.agg2, ex.hierarchical.agg3), seg[1:], strict=True):
        out.append(F.hardswish(agg.pointwise_conv(agg.conv1(part))))
    h = h + torch.cat(out, dim=1).flatten(2).transpose(1, 2)
    h = h[0]
    net = ex.attention_net  # Attn_Net_Gated: A = Wc(tanh(Wa h) * sigmoid(Wb h)), [N', 1]
    a = net.attention_c(net.attention_a(h) * net.attention_b(h))
    a = torch.softmax(a.transpose(1, 0), dim=1)
    return torch.mm(a, h)[0]


def _official_m4(model: M4, x: torch.Tensor) -> torch.Tensor:
    expert_output = torch.stack([_official_expert(ex, x) for ex in model.experts])  # [E, 512]
    shared = model.gate1_fc1(x.mean(dim=0)).view(4, -1)
    seg = model.hidden // 4
    outs = []
    for i in range(model.tasks):
        gate_out = model.gate1_fc2[i](shared)  # [4, E]
        tower_in = torch.cat([gate_out[j] @ expert_output[:, j * seg : (j + 1) * seg] for j in range(4)])
        outs.append(model.towers[i](tower_in))
    return torch.cat(outs)


@pytest.mark.parametrize("n", [1, 7, 16, 30])
def test_m4_matches_the_official_forward(n):
    model = small("m4", batched=False).double()
    x = torch.randn(n, SMALL["feat_input"], dtype=torch.float64)
    with torch.no_grad():
        expected = _official_m4(model, x)
        torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-12)
        batched = transfer_experts(model, batched=True).eval()
        torch.testing.assert_close(batched(x), expected, rtol=1e-9, atol=1e-12)


def test_mmoe_matches_the_official_forward():
    model = small("mmoe").double()
    x = torch.randn(11, SMALL["feat_input"], dtype=torch.float64)
    with torch.no_grad():
        pooled = []
        for ex in model.specific_experts1:  # AMIL expert: fc-ReLU-Dropout, gated attention, M = softmax(A^T) h
            h = ex.attention_net[:3](x)
            net = ex.attention_net[3]
            a = torch.softmax(net.attention_c(net.attention_a(h) * net.attention_b(h)).T, dim=1)
            pooled.append((a @ h)[0])
        pooled = torch.stack(pooled)
        expected = torch.cat(
            [tower(gate(x.mean(0)) @ pooled) for tower, gate in zip(model.towers, model.gate1, strict=True)]
        )
        torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# Batched experts == one-after-another experts after a weight transfer


@pytest.mark.parametrize("n", [1, 23, 64])
def test_batched_experts_equal_one_after_another_both_directions(n):
    torch.manual_seed(1)
    batched = build_model("m4", feat_input=96, tasks=4, num_expert=3, hidden=64).eval()
    x = torch.randn(n, 96)
    sequential = transfer_experts(batched, batched=False).eval()
    assert batched.batched and not sequential.batched
    assert isinstance(sequential.experts, SequentialMPExperts) and isinstance(batched.experts, BatchedMPExperts)
    with torch.no_grad():
        p_b, a_b = batched(x, return_attention=True)
        p_s, a_s = sequential(x, return_attention=True)
        torch.testing.assert_close(p_b, p_s, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a_b, a_s, rtol=1e-4, atol=1e-6)
        # The other direction: a model built one-after-another, moved to the batched form.
        torch.manual_seed(2)
        seq2 = build_model("m4", feat_input=96, tasks=4, num_expert=3, hidden=64, batched=False).eval()
        torch.testing.assert_close(transfer_experts(seq2, batched=True).eval()(x), seq2(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("to_batched", [True, False])
def test_transfer_keeps_the_train_eval_mode(to_batched):
    """A copy of an eval-mode model must stay in eval mode (no dropout in its experts), and vice versa."""
    torch.manual_seed(5)
    model = build_model("m4", feat_input=48, tasks=3, num_expert=2, hidden=32, batched=not to_batched).eval()
    moved = transfer_experts(model, batched=to_batched)
    assert not any(m.training for m in moved.modules()), "experts left in training mode after transfer_experts"
    x = torch.randn(20, 48)
    with torch.no_grad():
        torch.testing.assert_close(moved(x), model(x), rtol=1e-4, atol=1e-5)
    trained = transfer_experts(model.train(), batched=to_batched)
    assert all(m.training for m in trained.modules())


def test_batched_experts_equal_one_after_another_at_the_official_size():
    torch.manual_seed(3)
    batched = build_model("m4").eval()
    sequential = transfer_experts(batched, batched=False).eval()
    x = torch.randn(37, 2048)
    with torch.no_grad():
        torch.testing.assert_close(batched(x), sequential(x), rtol=1e-4, atol=1e-5)


def test_transfer_round_trip_keeps_every_weight_exactly():
    model = small("m4")
    back = transfer_experts(transfer_experts(model, batched=False), batched=True)
    assert model.state_dict().keys() == back.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    seq = unpack_experts(model.experts)
    again = unpack_experts(pack_experts(seq))
    for k, v in seq.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    assert transfer_experts(model, batched=True) is not model  # a copy even when no transfer is needed


def test_batched_experts_have_the_same_gradients():
    """Forward + backward in both forms (float64, eval mode): same input gradient and same weight gradients."""
    torch.manual_seed(4)
    seq = build_model("m4", feat_input=40, tasks=3, num_expert=3, hidden=32, batched=False).double().eval()
    bat = transfer_experts(seq, batched=True).eval()
    x = torch.randn(10, 40, dtype=torch.float64)
    xs, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    seq(xs).sum().backward()
    bat(xb).sum().backward()
    torch.testing.assert_close(xs.grad, xb.grad, rtol=1e-9, atol=1e-12)
    # Pack the sequential experts' gradients like weights and compare with the batched gradients.
    grads = transfer_experts(seq, batched=False)
    with torch.no_grad():
        for (_name, p), (_, g) in zip(grads.experts.named_parameters(), seq.experts.named_parameters(), strict=True):
            p.copy_(g.grad if g.grad is not None else torch.zeros_like(p))
    packed = pack_experts(grads.experts)
    for name, p in bat.experts.named_parameters():
        expected = dict(packed.named_parameters())[name]
        got = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10, msg=name)
    torch.testing.assert_close(bat.gate1_fc1[0].weight.grad, seq.gate1_fc1[0].weight.grad, rtol=1e-9, atol=1e-12)


def test_batched_experts_equal_one_after_another_in_training_without_dropout(monkeypatch):
    """Training mode with dropout switched off in both forms (p -> 0): same outputs and gradients, float64."""
    monkeypatch.setattr(m4model, "_dropout", lambda h, p, training: h)
    monkeypatch.setattr(torch.nn.Dropout, "forward", lambda self, h: h)
    torch.manual_seed(6)
    seq = build_model("m4", feat_input=40, tasks=3, num_expert=3, hidden=32, batched=False).double().train()
    bat = transfer_experts(seq, batched=True).train()
    x = torch.randn(17, 40, dtype=torch.float64)
    p_s, p_b = seq(x), bat(x)
    torch.testing.assert_close(p_b, p_s, rtol=1e-10, atol=1e-12)
    p_s.sum().backward()
    p_b.sum().backward()
    torch.testing.assert_close(bat.experts.fc.weight.grad, torch.cat([e.fc[0].weight.grad for e in seq.experts]))


def test_dropout_keeps_with_probability_1_minus_p_and_rescales():
    torch.manual_seed(7)
    h = torch.ones(200_000, requires_grad=True)
    out = m4model._dropout(h, 0.25, training=True)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.005
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.75))
    out.sum().backward()
    torch.testing.assert_close(h.grad, out.detach())  # gradient: the same mask and scale
    assert m4model._dropout(h, 0.25, training=False) is h and m4model._dropout(h, 0.0, training=True) is h


# ---------------------------------------------------------------------------------------------------------------------
# Saved weights: official (one-after-another) layout, loaded back into the batched form


def test_saved_model_is_in_the_official_layout_and_loads_back(tmp_path):
    from safetensors.torch import load_file

    from methods.m4.data import Split
    from methods.m4.train import ModelRun, load_model, save_model

    model = small("m4")
    kwargs = {**SMALL, "batched": True}
    run = ModelRun("m4", kwargs, [0, 1, 2], Split("split0", [0], [1], [2]), tmp_path / "m4")
    saved = save_model(model, run, ["A", "B", "C"], ["s2"])
    keys = load_file(saved / "model.safetensors").keys()
    assert "experts.0.fc.0.weight" in keys and "experts.1.hierarchical.agg3.pointwise_conv.weight" in keys
    assert "gate1_fc1.0.weight" in keys and "gate1_fc2.2.0.weight" in keys and "towers.2.fc2.bias" in keys
    loaded, meta = load_model(saved)
    assert loaded.batched and meta["genes"] == ["A", "B", "C"] and meta["test_slides"] == ["s2"]
    x = torch.randn(12, SMALL["feat_input"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-6)

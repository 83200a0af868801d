"""An independent forward pass of the released Flames scorer, written from the authors' modeling_internlm.py (InternLM
v1, eager attention) and its `predict`: RMSNorm in float32, rotary embeddings from inv_freq = 1 / base^(2i/d) with
rotate_half, biased q/k/v/o projections, an additive causal + padding mask of finfo.min clamped from below, softmax in
float32, a SiLU-gated MLP; every head applied to every position, each row read at count(input_ids != pad) - 1.
Nothing here comes from transformers: it checks the converted LlamaForSequenceClassification."""

from __future__ import annotations

import math

import torch


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    var = x.float().pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def head_logits(
    state: dict[str, torch.Tensor], cfg: dict, input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int
) -> list[torch.Tensor]:
    """Per head, the [batch, classes] logits `predict` takes its argmax of (float32)."""
    s = {k: v.float() for k, v in state.items()}
    b, t = input_ids.shape
    hidden, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    hd, eps = hidden // nh, cfg["rms_norm_eps"]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    freqs = torch.einsum("i,j->ij", torch.arange(t).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]
    low = torch.finfo(torch.float32).min
    causal = torch.triu(torch.full((t, t), low), diagonal=1)
    padding = (1.0 - attention_mask[:, None, None, :].float()) * low
    mask = causal[None, None] + padding
    h = s["model.embed_tokens.weight"][input_ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = _rms(h, s[p + "input_layernorm.weight"], eps)

        def proj(name: str, x: torch.Tensor = x, p: str = p) -> torch.Tensor:
            y = x @ s[f"{p}self_attn.{name}_proj.weight"].T + s[f"{p}self_attn.{name}_proj.bias"]
            return y.view(b, t, nh, hd).transpose(1, 2)

        q, k, v = proj("q"), proj("k"), proj("v")
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        w = q @ k.transpose(2, 3) / math.sqrt(hd) + mask
        w = torch.max(w, torch.tensor(low)).softmax(-1)
        out = (w @ v).transpose(1, 2).reshape(b, t, hidden)
        h = h + out @ s[p + "self_attn.o_proj.weight"].T + s[p + "self_attn.o_proj.bias"]
        x = _rms(h, s[p + "post_attention_layernorm.weight"], eps)
        gate, up = x @ s[p + "mlp.gate_proj.weight"].T, x @ s[p + "mlp.up_proj.weight"].T
        h = h + (torch.nn.functional.silu(gate) * up) @ s[p + "mlp.down_proj.weight"].T
    h = _rms(h, s["model.norm.weight"], eps)
    last = (input_ids != pad_id).sum(-1) - 1
    return [(h @ s[f"classifiers.{i}.weight"].T)[torch.arange(b), last] for i in range(5)]

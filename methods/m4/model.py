"""M4: Multi-gate Mixture-of-experts with Multi-proxy for Multiple instance learning (Li et al., MedIA 2025).

A slide is a bag of N patch features x: [N, feat_input]. M4 predicts T gene mutations at once:

* Multi-proxy experts (MP-Expert). Each expert embeds the patches (fc), restores a square patch grid by padding with
  the first instances, adds a depthwise convolutional position encoding, and splits the 512 channels into 4 segments
  ("proxies") that see the grid through different receptive fields: identity, 3x3, 5x5 and 7x7 depthwise-separable
  convolutions. A residual connection and gated attention pooling give one slide feature per expert.
* Multi-proxy gates (MP-Gate). A layer shared by all tasks maps the mean patch feature to 512 channels, cut into the
  same 4 segments; each task has its own softmax over experts per segment.
* Mixture and towers. For task t, segment s of the tower input is the gate-weighted sum of the experts' segment s.
  One small tower per gene outputs a probability.

The official code runs the experts one after another (`SequentialMPExperts`, whose state-dict keys match the official
checkpoints). `BatchedMPExperts` holds the experts' weights stacked, computes their first Linear as one GEMM and the
rest expert by expert on cache-sized tensors; `transfer_experts` moves weights between the two forms. Baselines from
the same repository: MMoE (gated-ABMIL experts, linear gates) and the single-task gated ABMIL ("PorpoiseAMIL"), run
once per gene.

Every model maps a bag to probabilities of shape [T] (T = 1 for the single-task ABMIL), or to their logits with
`logits=True` (what training uses, so that a diverging run gives a non-finite loss rather than a clamped log of 0 or 1);
`return_attention=True` also gives a per-task attention over the N input patches, for heatmaps.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from common.registry import register
from methods.m4 import kernels
from methods.m4.config import SEGMENTS, MilConfig  # SEGMENTS: the official code hard-codes a 4-way split

PROXY_KERNELS = (3, 5, 7)  # segments 1..3; segment 0 is the identity proxy
UNUSED_CLASSES = 4  # size of the experts' unused classifier, kept from the official state dict


def _xavier_init(module: nn.Module) -> None:
    """The official initialize_weights: Xavier-normal Linear weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)


def square_pad(h: torch.Tensor) -> tuple[torch.Tensor, int]:
    """[N, C] -> ([side*side, C], side): append the first instances again until the bag fills a square grid.

    As in TransMIL and the official M4, the grid follows the feature order, not slide coordinates; the duplicates take
    part in attention. side^2 - N <= N for every N >= 1, so one slice of the head always suffices.
    """
    n = h.shape[0]
    side = math.ceil(math.sqrt(n))
    return torch.cat([h, h[: side * side - n]]), side


def fold_padding(attn: torch.Tensor, n: int) -> torch.Tensor:
    """Attention over the padded grid [..., side*side] -> over the N real patches, duplicates added to their source."""
    head, extra = attn[..., :n], attn[..., n:]
    return torch.cat([head[..., : extra.shape[-1]] + extra, head[..., extra.shape[-1] :]], dim=-1)


def _to_grid(h: torch.Tensor, side: int) -> torch.Tensor:
    """Tokens [side*side, C] -> image [1, C, side, side], row-major in instance order, as a channels-last view."""
    return h.reshape(1, side, side, h.shape[1]).permute(0, 3, 1, 2)


def _from_grid(g: torch.Tensor) -> torch.Tensor:
    """Image [1, C, side, side] -> tokens [side*side, C]. Written with permute/reshape (not indexing) so the gradient
    reaching the convolution stays channels-last: a strided-layout gradient sends mkldnn's depthwise backward down a
    path several times slower on CPU."""
    return g.permute(0, 2, 3, 1).reshape(-1, g.shape[1])


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks (module and attribute names follow the official code so its checkpoints load)


class GatedAttention(nn.Module):
    """Gated attention scores (Ilse et al. 2018): w^T (tanh(V h) * sigmoid(U h)), one score per instance."""

    def __init__(self, dim: int, attn_dim: int, dropout: float = 0.25):
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(dim, attn_dim), nn.Tanh(), nn.Dropout(dropout))
        self.attention_b = nn.Sequential(nn.Linear(dim, attn_dim), nn.Sigmoid(), nn.Dropout(dropout))
        self.attention_c = nn.Linear(attn_dim, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.attention_c(self.attention_a(h) * self.attention_b(h)).squeeze(-1)


class SeparableConv2d(nn.Module):
    """Depthwise k x k then pointwise 1 x 1, both without bias."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels, bias=False)
        self.pointwise_conv = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.conv1(g))


class ConvPosEnc(nn.Module):
    """Position encoding by a 3x3 depthwise convolution over the patch grid, with a residual connection."""

    def __init__(self, dim: int, kernel: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)

    def forward(self, h: torch.Tensor, side: int) -> torch.Tensor:
        g = _to_grid(h, side)
        return _from_grid(self.proj(g) + g)


class MultiProxy(nn.Module):
    """The official `Aggregator`: 4 channel segments with receptive fields identity / 3x3 / 5x5 / 7x7, then Hardswish."""

    def __init__(self, dim: int):
        super().__init__()
        seg = dim // SEGMENTS
        self.agg1, self.agg2, self.agg3 = (SeparableConv2d(seg, k) for k in PROXY_KERNELS)

    def forward(self, h: torch.Tensor, side: int) -> torch.Tensor:
        identity, *convolved = _to_grid(h, side).chunk(SEGMENTS, dim=1)
        proxies = [identity] + [
            conv(part) for conv, part in zip((self.agg1, self.agg2, self.agg3), convolved, strict=True)
        ]
        return _from_grid(F.hardswish(torch.cat(proxies, dim=1)))


class MPExpert(nn.Module):
    """One multi-proxy expert (the official `MP_AMIL` with is_expert=True): bag [N, F] -> slide feature [hidden]."""

    def __init__(self, feat_input: int = 2048, hidden: int = 512, attn_dim: int = 128):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(feat_input, hidden), nn.ReLU(), nn.Dropout(0.1))
        self.cpe = ConvPosEnc(hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.hierarchical = MultiProxy(hidden)
        self.attention_net = GatedAttention(hidden, attn_dim, dropout=0.25)
        # Never called by an expert (it returns the pooled feature), but part of the official state dict and of the
        # official parameter count (7,462,613), so it is kept.
        self.classifier = nn.Linear(hidden, UNUSED_CLASSES)
        _xavier_init(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the pooled feature [hidden] and the attention over the padded grid [side*side]."""
        h, side = square_pad(self.fc(x))
        h = self.cpe(h, side)
        h = h + self.hierarchical(self.norm1(h), side)
        attn = torch.softmax(self.attention_net(h), dim=-1)
        return attn @ h, attn


class SequentialMPExperts(nn.ModuleList):
    """The official form: experts evaluated one after another. Keys: experts.<i>.<official names>."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, attn = zip(*(expert(x) for expert in self), strict=True)
        return torch.stack(pooled), torch.stack(attn)


def _dropout(h: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout with the mask drawn as uniform >= p: the same distribution as F.dropout, whose bernoulli_ mask is
    slower on CPU (about 0.07 s more per 5,000-instance M4 training step on 2 cores)."""
    if not training or p == 0:
        return h
    return h * torch.rand_like(h).ge_(p).div_(1 - p)


class BatchedMPExperts(nn.Module):
    """All experts with their weights stacked; same computation as `SequentialMPExperts`.

    * fc: one Linear(F, E*hidden), expert e owning output rows [e*hidden, (e+1)*hidden): the largest cost of a step,
      one GEMM for all experts;
    * the rest runs expert by expert on views of the stacked weights. A [N', hidden] tensor (~10 MB at 5,000
      instances) stays in the CPU cache where the [N', E*hidden] tensors of a fully batched pass do not, and grouped
      1x1/depthwise convolutions over E*hidden channels fall off oneDNN's fast path: on 2 CPU cores the fully batched
      pass was 0.6x one expert after another beyond the first Linear;
    * pointwise convolutions are matmuls on channels-last tokens; attention_a and attention_b (same input) are one
      matmul; dropout is `_dropout` (cheaper mask, same distribution).

    Stacked layout: convolutions concatenate the experts' channels (cpe, depthwise: E*channels; pointwise: E*seg
    output rows); LayerNorm affine, attention and the unused classifier have a leading expert axis.
    Build it with `pack_experts` (from per-expert modules) so both forms always share one initialisation.
    """

    def __init__(self, num_expert: int, feat_input: int = 2048, hidden: int = 512, attn_dim: int = 128):
        super().__init__()
        e, seg = num_expert, hidden // SEGMENTS
        self.num_expert, self.hidden, self.attn_dim = num_expert, hidden, attn_dim
        self.fc = kernels.Linear(feat_input, e * hidden)
        self.cpe = nn.Conv2d(e * hidden, e * hidden, 3, padding=1, groups=e * hidden)
        self.norm_weight = nn.Parameter(torch.ones(e, hidden))
        self.norm_bias = nn.Parameter(torch.zeros(e, hidden))
        self.depthwise = nn.ModuleList(
            nn.Conv2d(e * seg, e * seg, k, padding=k // 2, groups=e * seg, bias=False) for k in PROXY_KERNELS
        )
        self.pointwise = nn.ModuleList(nn.Conv2d(e * seg, e * seg, 1, groups=e, bias=False) for _ in PROXY_KERNELS)
        # attention_a and attention_b share their input, so their weights are concatenated: one matmul for both.
        self.attn_ab_weight = nn.Parameter(torch.zeros(e, 2 * attn_dim, hidden))
        self.attn_ab_bias = nn.Parameter(torch.zeros(e, 2 * attn_dim))
        self.attn_c_weight = nn.Parameter(torch.zeros(e, 1, attn_dim))
        self.attn_c_bias = nn.Parameter(torch.zeros(e, 1))
        # Unused, as in MPExpert: kept so both forms hold the same parameters and the count matches the official one.
        self.classifier_weight = nn.Parameter(torch.zeros(e, UNUSED_CLASSES, hidden))
        self.classifier_bias = nn.Parameter(torch.zeros(e, UNUSED_CLASSES))

    def _per_expert(self) -> list[tuple[torch.Tensor, ...]]:
        """Each expert's weights as views of the stacked ones (one split node per tensor in the backward)."""
        e, seg = self.num_expert, self.hidden // SEGMENTS
        tensors = [
            self.cpe.weight.chunk(e),
            self.cpe.bias.chunk(e),
            self.norm_weight.unbind(0),
            self.norm_bias.unbind(0),
            *(conv.weight.chunk(e) for conv in self.depthwise),
            *(conv.weight.view(e, seg, seg).unbind(0) for conv in self.pointwise),
            self.attn_ab_weight.unbind(0),
            self.attn_ab_bias.unbind(0),
            self.attn_c_weight.unbind(0),
            self.attn_c_bias.unbind(0),
        ]
        return list(zip(*tensors, strict=True))

    def _expert(self, h: torch.Tensor, weights: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """One expert after its fc: pre-activation [N, hidden] -> pooled [hidden], attention over the grid [side^2]."""
        cpe_w, cpe_b, norm_w, norm_b, *proxy_w, ab_w, ab_b, c_w, c_b = weights
        c, d, seg = self.hidden, self.attn_dim, self.hidden // SEGMENTS
        h, side = square_pad(_dropout(F.relu(h), 0.1, self.training))
        g = _to_grid(h, side)
        h = _from_grid(F.conv2d(g, cpe_w, cpe_b, padding=1, groups=c) + g)
        identity, *parts = F.layer_norm(h, (c,), norm_w, norm_b).split(seg, dim=1)
        proxies = [identity]
        for part, dw, pw in zip(parts, proxy_w[:3], proxy_w[3:], strict=True):
            grid = F.conv2d(_to_grid(part, side), dw, padding=dw.shape[-1] // 2, groups=seg)
            proxies.append(kernels.linear(_from_grid(grid), pw))
        h = h + F.hardswish(torch.cat(proxies, dim=1))
        ab = kernels.linear(h, ab_w, ab_b)
        gated = _dropout(torch.tanh(ab[:, :d]), 0.25, self.training) * _dropout(
            torch.sigmoid(ab[:, d:]), 0.25, self.training
        )
        attn = torch.softmax(F.linear(gated, c_w, c_b).squeeze(-1), dim=-1)
        return attn @ h, attn

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bag [N, F] -> pooled features [E, hidden] and attention over the padded grid [E, side*side]."""
        pre = self.fc(x).chunk(self.num_expert, dim=1)
        pooled, attn = zip(*map(self._expert, pre, self._per_expert()), strict=True)
        return torch.stack(pooled), torch.stack(attn)


# Batched parameter <- per-expert parameters (concatenated on dim 0 within an expert); experts are then either
# concatenated on dim 0 ("cat": grouped convolutions, the fused fc) or stacked on a new leading axis ("stack").
_PACKING: list[tuple[str, tuple[str, ...], str]] = [
    ("fc.weight", ("fc.0.weight",), "cat"),
    ("fc.bias", ("fc.0.bias",), "cat"),
    ("cpe.weight", ("cpe.proj.weight",), "cat"),
    ("cpe.bias", ("cpe.proj.bias",), "cat"),
    ("norm_weight", ("norm1.weight",), "stack"),
    ("norm_bias", ("norm1.bias",), "stack"),
    *((f"depthwise.{i}.weight", (f"hierarchical.agg{i + 1}.conv1.weight",), "cat") for i in range(3)),
    *((f"pointwise.{i}.weight", (f"hierarchical.agg{i + 1}.pointwise_conv.weight",), "cat") for i in range(3)),
    ("attn_ab_weight", ("attention_net.attention_a.0.weight", "attention_net.attention_b.0.weight"), "stack"),
    ("attn_ab_bias", ("attention_net.attention_a.0.bias", "attention_net.attention_b.0.bias"), "stack"),
    ("attn_c_weight", ("attention_net.attention_c.weight",), "stack"),
    ("attn_c_bias", ("attention_net.attention_c.bias",), "stack"),
    ("classifier_weight", ("classifier.weight",), "stack"),
    ("classifier_bias", ("classifier.bias",), "stack"),
]


def pack_experts(experts: SequentialMPExperts) -> BatchedMPExperts:
    """One-after-another experts -> the batched form with the same weights."""
    first = experts[0]
    batched = BatchedMPExperts(
        len(experts), first.fc[0].in_features, first.fc[0].out_features, first.attention_net.attention_c.in_features
    ).to(first.fc[0].weight.device, first.fc[0].weight.dtype)
    states = [ex.state_dict() for ex in experts]
    packed = {}
    for name, sources, mode in _PACKING:
        per_expert = [torch.cat([s[src] for src in sources]) for s in states]
        packed[name] = torch.cat(per_expert) if mode == "cat" else torch.stack(per_expert)
    batched.load_state_dict(packed)
    return batched


def unpack_experts(batched: BatchedMPExperts) -> SequentialMPExperts:
    """The batched form -> one-after-another experts (official state-dict layout) with the same weights."""
    e = batched.num_expert
    experts = SequentialMPExperts(
        MPExpert(batched.fc.in_features, batched.hidden, batched.attn_dim) for _ in range(e)
    ).to(batched.fc.weight.device, batched.fc.weight.dtype)
    state = batched.state_dict()
    targets = [ex.state_dict() for ex in experts]
    for name, sources, mode in _PACKING:
        per_expert = state[name].chunk(e) if mode == "cat" else state[name].unbind(0)
        for target, tensor in zip(targets, per_expert, strict=True):
            sizes = [target[src].shape[0] for src in sources]
            for src, piece in zip(sources, tensor.reshape(-1, *target[sources[0]].shape[1:]).split(sizes), strict=True):
                target[src] = piece.reshape(target[src].shape)
    for ex, target in zip(experts, targets, strict=True):
        ex.load_state_dict(target)
    return experts


# ---------------------------------------------------------------------------------------------------------------------
# Models


class Tower(nn.Module):
    """Per-gene head: Linear(512, 32) - ReLU - Dropout(0.4) - Linear(32, 1) - Sigmoid."""

    def __init__(self, dim: int = 512, hidden: int = 32, out: int = 1):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out)
        self.dropout = nn.Dropout(0.4)

    def forward(self, h: torch.Tensor, logits: bool = False) -> torch.Tensor:
        z = self.fc2(self.dropout(F.relu(self.fc1(h))))
        return z if logits else torch.sigmoid(z)


def _towers(tasks: int, dim: int, hidden: int) -> nn.ModuleList:
    return nn.ModuleList(Tower(dim, hidden) for _ in range(tasks))


def _run_towers(towers: nn.ModuleList, tower_in: torch.Tensor, logits: bool) -> torch.Tensor:
    return torch.cat([tower(h, logits) for tower, h in zip(towers, tower_in, strict=True)])


class M4(nn.Module):
    def __init__(
        self,
        feat_input: int = 2048,
        tasks: int = 10,
        num_expert: int = 5,
        hidden: int = 512,
        towers_hidden: int = 32,
        batched: bool = True,
    ):
        super().__init__()
        if hidden % SEGMENTS:
            raise ValueError(f"hidden ({hidden}) must split into {SEGMENTS} proxy segments")
        self.tasks, self.num_expert, self.hidden = tasks, num_expert, hidden
        experts = SequentialMPExperts(MPExpert(feat_input, hidden) for _ in range(num_expert))
        self.experts: nn.Module = pack_experts(experts) if batched else experts
        self.gate1_fc1 = nn.Sequential(nn.Linear(feat_input, hidden), nn.ReLU())  # shared by all tasks
        self.gate1_fc2 = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden // SEGMENTS, num_expert), nn.Softmax(dim=-1)) for _ in range(tasks)
        )
        self.towers = _towers(tasks, hidden, towers_hidden)

    @property
    def batched(self) -> bool:
        return isinstance(self.experts, BatchedMPExperts)

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-proxy gates: [T, SEGMENTS, E], a softmax over experts per task and per segment."""
        shared = self.gate1_fc1(x.mean(dim=0)).view(SEGMENTS, -1)
        return torch.stack([gate(shared) for gate in self.gate1_fc2])

    def forward(self, x: torch.Tensor, return_attention: bool = False, logits: bool = False):
        pooled, attn = self.experts(x)  # [E, C], [E, N']
        gates = self.gates(x)
        # Segment s of task t's tower input mixes the experts' segment s with that task's segment-s gate.
        segments = pooled.view(self.num_expert, SEGMENTS, -1)
        tower_in = torch.einsum("tse,esc->tsc", gates, segments).reshape(self.tasks, self.hidden)
        probs = _run_towers(self.towers, tower_in, logits)
        if not return_attention:
            return probs
        return probs, gates.mean(dim=1) @ fold_padding(attn, x.shape[0])


def transfer_experts(model: M4, batched: bool) -> M4:
    """A copy of `model` whose experts are in the batched (True) or one-after-another (False) form, same weights."""
    out = copy.deepcopy(model)
    if model.batched != batched:
        out.experts = pack_experts(model.experts) if batched else unpack_experts(model.experts)
        out.experts.train(model.experts.training)  # new modules start in training mode (dropout on)
    return out


class ABMIL(nn.Module):
    """Gated-attention MIL (the official `AMIL` / `PorpoiseAMIL`): fc - gated attention pooling - classifier.

    As an MMoE expert it returns the pooled feature and its classifier (4 outputs) is unused but kept for the official
    count; as the single-task baseline (attn_dim 256, 1 output) the classifier gives the gene's logit.
    """

    def __init__(self, feat_input: int = 2048, hidden: int = 512, attn_dim: int = 256, n_out: int = 1):
        super().__init__()
        self.attention_net = nn.Sequential(
            kernels.Linear(feat_input, hidden), nn.ReLU(), nn.Dropout(0.25), GatedAttention(hidden, attn_dim, 0.25)
        )
        self.classifier = nn.Linear(hidden, n_out)
        _xavier_init(self)

    def pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.attention_net[:3](x)
        attn = torch.softmax(self.attention_net[3](h), dim=-1)
        return attn @ h, attn

    def forward(self, x: torch.Tensor, return_attention: bool = False, logits: bool = False):
        pooled, attn = self.pool(x)
        z = self.classifier(pooled)
        probs = z if logits else torch.sigmoid(z)
        return (probs, attn[None]) if return_attention else probs


class MMoE(nn.Module):
    """The official MMoE baseline: gated-ABMIL experts, one linear softmax gate per task on the mean feature."""

    def __init__(
        self, feat_input: int = 2048, tasks: int = 10, num_expert: int = 5, hidden: int = 512, towers_hidden: int = 32
    ):
        super().__init__()
        self.tasks = tasks
        self.specific_experts1 = nn.ModuleList(
            ABMIL(feat_input, hidden, attn_dim=128, n_out=UNUSED_CLASSES) for _ in range(num_expert)
        )
        self.gate1 = nn.ModuleList(
            nn.Sequential(nn.Linear(feat_input, num_expert), nn.Softmax(dim=-1)) for _ in range(tasks)
        )
        self.towers = _towers(tasks, hidden, towers_hidden)

    def forward(self, x: torch.Tensor, return_attention: bool = False, logits: bool = False):
        pooled, attn = (
            torch.stack(t) for t in zip(*(expert.pool(x) for expert in self.specific_experts1), strict=True)
        )
        gates = torch.stack([gate(x.mean(dim=0)) for gate in self.gate1])  # [T, E]
        probs = _run_towers(self.towers, gates @ pooled, logits)
        return (probs, gates @ attn) if return_attention else probs


# ---------------------------------------------------------------------------------------------------------------------
# Registered builders: common.registry.create("m4.model", "m4", feat_input=1024, tasks=5)


@register("m4.model", "m4")
def m4(feat_input: int = 2048, tasks: int = 10, num_expert: int = 5, hidden: int = 512, batched: bool = True) -> M4:
    return M4(feat_input, tasks, num_expert, hidden, batched=batched)


@register("m4.model", "mmoe")
def mmoe(feat_input: int = 2048, tasks: int = 10, num_expert: int = 5, hidden: int = 512) -> MMoE:
    return MMoE(feat_input, tasks, num_expert, hidden)


@register("m4.model", "amil")
def amil(feat_input: int = 2048, hidden: int = 512) -> ABMIL:
    return ABMIL(feat_input, hidden, attn_dim=256, n_out=1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


SINGLE_TASK = ("amil",)  # trained once per gene


def model_kwargs(name: str, mil: MilConfig, feat_input: int, tasks: int) -> dict:
    """Build arguments of a registered model from the `mil` section (the single-task ABMIL has no experts or tasks)."""
    if name in SINGLE_TASK:
        return {"feat_input": feat_input, "hidden": mil.hidden}
    kwargs = {"feat_input": feat_input, "tasks": tasks, "num_expert": mil.num_expert, "hidden": mil.hidden}
    return {**kwargs, "batched": mil.batched_experts} if name == "m4" else kwargs

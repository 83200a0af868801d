"""One model container for every method: the network (its Conv2d / Linear swapped for LSQ layers unless `fp`) and
what chooses their bits: a constant configuration (`fixed`, `static`), or the quality-aware policy (`dqmq`).

Registered as `dqmq.model` / `quant`, so common.checkpoint.save_module / load_module rebuild it from its build
arguments. The model takes images in [0, 1] and normalises them itself (the policy reads the raw pixels).
"""

from __future__ import annotations

import torch
from torch import nn

from common.registry import create, register
from methods.dqmq import nets  # noqa: F401 - registers the networks
from methods.dqmq.bit_bn import swap_batchnorm
from methods.dqmq.policy import BitPolicy, RewardModel
from methods.dqmq.quant import quant_layers, set_bits, swap_layers

METHODS = ("dqmq", "fp", "fixed", "static")


class QuantModel(nn.Module):
    def __init__(
        self,
        arch: str,
        num_classes: int,
        in_chans: int,
        image_size: int,
        method: str,
        candidates: list[int],
        mean: list[float],
        std: list[float],
        width: int = 16,
        pretrained: bool = False,
        policy_hidden: int = 32,
        reward_hidden: int = 64,
        bit_bn: bool = False,
    ):
        super().__init__()
        self.method = method
        self.in_chans, self.image_size = in_chans, image_size
        self.net = create(
            "dqmq.net", arch, num_classes=num_classes, in_chans=in_chans, width=width, pretrained=pretrained
        )
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.register_buffer("calls", torch.tensor(0))  # loss calls so far: the training phase, kept across resume
        if method == "fp":
            return
        self.layer_names = swap_layers(self.net, candidates)
        self.layers = quant_layers(self.net)
        n, k = len(self.layers), len(candidates)
        self.register_buffer("candidates", torch.tensor(candidates, dtype=torch.long))
        self.register_buffer("macs", self._count_macs(in_chans, image_size))
        self.register_buffer("w8a8_bitops", self.macs.sum() * 64)
        if bit_bn:  # each BatchNorm after a quantized layer: one per bit pair of that layer (bit_bn.py)
            swap_batchnorm(self.net, lambda: self._count_macs(in_chans, image_size))
        # The constant configuration (candidate indices [L, 2]): fixed's only one, static's after its search.
        self.register_buffer("choice", torch.full((n, 2), k - 1, dtype=torch.long))
        if method == "dqmq":
            self.policy = BitPolicy(n, k, policy_hidden)
            self.reward = RewardModel(n, k, reward_hidden)
        if method == "static":
            self.arch_logits = nn.Parameter(torch.zeros(n, 2, k))  # EdMIPS's per-layer alphas
            self.register_buffer("searched", torch.tensor(False))

    @torch.no_grad()
    def _count_macs(self, in_chans: int, image_size: int) -> torch.Tensor:
        """MACs per sample of every quantized layer, from one forward at the input size (eval mode: nothing learns)."""
        was = self.training
        self.eval()
        x = torch.zeros(1, in_chans, image_size, image_size)
        k = len(self.layers[0].candidates) - 1
        set_bits(self.layers, torch.full((1, len(self.layers)), k), torch.full((1, len(self.layers)), k))
        self.net(x)
        self.train(was)
        return torch.tensor([float(layer.macs) for layer in self.layers])

    def decide(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inference choice: candidate indices for weights and activations, [N, L] each."""
        if self.method == "dqmq":
            idx = self.policy(self.policy.features(image)).argmax(-1)
        elif self.method == "static" and not bool(self.searched):
            idx = self.arch_logits.argmax(-1).expand(len(image), -1, -1)
        else:
            idx = self.choice.expand(len(image), -1, -1)
        return idx[..., 0], idx[..., 1]

    def forward(self, image: torch.Tensor, bits: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits; `bits` (indices [N, L] for weights and activations) overrides the model's own choice."""
        if self.method != "fp":
            w, a = bits if bits is not None else self.decide(image)
            set_bits(self.layers, w, a)
        return self.net((image - self.mean) / self.std)

    def forward_soft(self, image: torch.Tensor, w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Logits with every layer at the probability-weighted mix of its candidates (w, a: [L, K]; EdMIPS)."""
        set_bits(self.layers, w, a, soft=True)
        return self.net((image - self.mean) / self.std)


@register("dqmq.model", "quant")
def build_model(**kwargs) -> QuantModel:
    return QuantModel(**kwargs)

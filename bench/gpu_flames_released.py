"""The released Flames scorer's shape (InternLM-chat-7B as transformers' Llama with q/k/v/o biases, 13 head outputs,
fp16) scoring 1,000 inputs of the released prompts' lengths: prompts/s and peak memory, batched as `score` batches
(sorted by length, padded to each batch's longest) and as infer.py batches (batches of 16 in the given order).

The weights are random (the release cannot be downloaded here; speed does not depend on their values), built from
the config the converted release has (methods/flames/released.py llama_config on InternLM-chat-7B's config fields).
The inputs are token ids of 120 to 700 tokens (a Flames prompt is about 80 Chinese characters; the template and an
answer make up the rest), drawn from a seed; the labels of the two forms must agree.
    python bench/gpu_flames_released.py                     # needs CUDA (says so and exits 0 without)
    python bench/gpu_flames_released.py --tiny --device cpu # the same code on a tiny shape, to check that it runs
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import torch

from common.bench import Figures
from common.textclf import pad
from methods.flames.released import llama_config

INTERNLM_CHAT_7B = dict(
    vocab_size=103168, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32
)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


def release_config(shape: dict) -> dict:
    return {
        "architectures": ["InternLMForSequenceClassification"],
        "bias": True,
        "max_position_embeddings": 2048,
        **shape,
    }


@torch.no_grad()
def run(model, ids: list[list[int]], batch: int, order: list[int], device: str) -> tuple[list[int], float]:
    """Labels of the Safety head in input order, and the seconds taken."""
    labels = [0] * len(ids)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(order), batch):
        chunk = order[i : i + batch]
        b = {k: v.to(device) for k, v in pad([ids[j] for j in chunk], 0).items()}
        for j, y in zip(chunk, model(**b).logits[:, 3:6].argmax(-1).tolist(), strict=True):
            labels[j] = y
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return labels, time.perf_counter() - start


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="a tiny shape instead of the 7B (checks the code)")
    p.add_argument("--prompts", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    figures = Figures(args.json, "gpu_flames_released")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device present: the GPU figures need one (run on a GPU machine); nothing measured")
        figures.note("no CUDA")
        return 0
    from transformers import LlamaForSequenceClassification

    cuda = args.device.startswith("cuda")
    shape = TINY if args.tiny else INTERNLM_CHAT_7B
    config = llama_config(release_config(shape), "bench")
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForSequenceClassification(config).to(torch.float16 if cuda else torch.float32).eval()
    name = torch.cuda.get_device_name() if cuda else "cpu"
    figures.device(f"{name}; {'tiny' if args.tiny else 'InternLM-chat-7B'} shape, fp16, batch {args.batch_size}")
    rng = random.Random(0)
    n = args.prompts if not args.tiny else min(args.prompts, 64)
    ids = [[1] + [rng.randrange(3, shape["vocab_size"]) for _ in range(rng.randint(120, 700))] for _ in range(n)]
    tokens = sum(map(len, ids))
    print(f"device: {name}; {n} inputs, {tokens:,} tokens; batch {args.batch_size}")
    run(model, ids[: args.batch_size], args.batch_size, list(range(args.batch_size)), args.device)  # warm-up
    results = {}
    for form, order in (
        ("score (sorted)", sorted(range(n), key=lambda i: len(ids[i]))),
        ("infer.py order", list(range(n))),
    ):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        labels, seconds = run(model, ids, args.batch_size, order, args.device)
        peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else float("nan")
        results[form] = labels
        print(f"{form}: {n / seconds:.1f} prompts/s ({tokens / seconds:,.0f} tokens/s), peak {peak:.1f} GB")
        figures.add(f"prompts/s, {form}", n / seconds, "prompts/s")
        figures.add(f"peak memory, {form}", peak, "GB")
    agree = sum(a == b for a, b in zip(*results.values(), strict=True)) / n
    print(f"labels agree on {agree:.1%} (fp16: padding changes rounding, so a near-tie may flip)")
    figures.add("labels agree", 100 * agree, "%")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

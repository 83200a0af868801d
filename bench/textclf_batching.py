"""Scoring with padding-aware batches (common.textclf.classify: sorted by length, padded to each batch's longest) against
one record at a time, same tiny model, same run. Also shown: batches of the records in their given order (padded to the
longest of each batch), to see what the sorting adds.

Records are GuardRank's synthetic prompt/response pairs with answers of 1 to 8 sentences (about 20 to 200 tokens), read
through GuardRank's input template. So that a busy machine cannot pass for a fast form: the load average and core
count are printed before and after; the forms are interleaved (the order rotates every repeat) and each repeat gives
one ratio of forms run back to back; the median and the spread (min-max) are reported. The forms must give identical
labels. Goal: batched >= 5x one at a time.

On a CPU the goal is out of reach for these models: they are compute-bound there. At one thread a 107-token record
costs 7.7 ms alone and 7.0 ms per record in a batch of 32 (30 tokens: 2.0 vs 2.2 ms), so batching can only save the
padding that sorting avoids and the per-call overhead, which is small next to the matrix products. Measured here
(2 shared cores, load average ~4): 1.10x (1.00-1.14) at one thread; sorted batches are 2.15x faster than batches in
the given order. The gain the goal asks for comes where per-call overhead dominates (GPU kernel launches).
Usage: python bench/textclf_batching.py [--records 256] [--repeats 5] [--batch-size 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time

import torch

from common.bench import load, spread
from common.config import ModelConfig
from common.models import load_model
from common.textclf import classify, encode, pad
from methods.guardrank.guardrank import DECODER_TEMPLATE
from methods.guardrank.synthetic import make_records

GOAL = 5.0
MAX_LENGTH = 512


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    records = make_records(n, 0.0, seed)[: n * 4]  # the four decoder dimensions
    rng.shuffle(records)
    return [
        DECODER_TEMPLATE.format(
            dimension=r["dimension"], prompt=r["prompt"], answer=" ".join([r["response"]] * rng.randint(1, 8))
        )
        for r in records[:n]
    ]


def one_at_a_time(model, tokenizer, batch: list[str]) -> list[int]:
    return [classify(model, tokenizer, [t], MAX_LENGTH, batch_size=1).labels[0] for t in batch]


@torch.no_grad()
def unsorted_batches(model, tokenizer, batch: list[str], batch_size: int) -> list[int]:
    ids, _ = encode(tokenizer, batch, MAX_LENGTH)
    labels: list[int] = []
    for start in range(0, len(ids), batch_size):
        labels += model(**pad(ids[start : start + batch_size], tokenizer.pad_token_id)).logits.argmax(-1).tolist()
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--model", default="tiny-llama", help="a tiny model (tiny-llama, tiny-roberta) or a local path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"before: {load()}; torch {torch.__version__}, {args.threads} thread(s)")
    batch = texts(args.records)
    with tempfile.TemporaryDirectory() as cache:
        torch.manual_seed(0)
        model, tokenizer = load_model(
            ModelConfig(name_or_path=args.model), cache, head="seq-cls", num_labels=4, corpus=batch
        )
    model.eval()
    lengths = [len(x) for x in encode(tokenizer, batch, MAX_LENGTH)[0]]
    print(
        f"{args.model}: {len(batch)} records, {min(lengths)}-{max(lengths)} tokens (mean {statistics.mean(lengths):.0f})"
    )

    forms = {
        "one at a time": lambda: one_at_a_time(model, tokenizer, batch),
        "batched, padding-aware": lambda: classify(model, tokenizer, batch, MAX_LENGTH, args.batch_size).labels,
        "batched, given order": lambda: unsorted_batches(model, tokenizer, batch, args.batch_size),
    }
    labels = {name: fn() for name, fn in forms.items()}  # warm-up, and the labels compared
    same = labels["batched, padding-aware"] == labels["one at a time"] == labels["batched, given order"]
    print(f"labels identical across forms: {'yes' if same else 'NO'}")
    times: dict[str, list[float]] = {name: [] for name in forms}
    names = list(forms)
    for r in range(args.repeats):
        for name in names[r % 3 :] + names[: r % 3]:  # rotate the order: no form always runs first
            start = time.perf_counter()
            forms[name]()
            times[name].append(time.perf_counter() - start)
    for name in names:
        print(f"  {name}: {spread(times[name], ' s', 3)}")
    ratios = [s / b for s, b in zip(times["one at a time"], times["batched, padding-aware"], strict=True)]
    sorting = [u / b for u, b in zip(times["batched, given order"], times["batched, padding-aware"], strict=True)]
    verdict = "met" if statistics.median(ratios) >= GOAL and same else "NOT met"
    print(f"one at a time / padding-aware batches: {spread(ratios)}  goal >= {GOAL}x: {verdict}")
    print(f"given-order batches / padding-aware batches: {spread(sorting)}")
    print(f"after: {load()}")


if __name__ == "__main__":
    main()

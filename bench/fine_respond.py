"""FINE's asking of a local model under test in batches (the default: `subject.batch_size` conversations per generate
call, left-padded, grouped by length) against one conversation at a time, same model, same run.

The model is the untrained tiny Qwen2 of common.models (it never emits EOS, so every reply runs to max_new_tokens:
the same work for both forms), on one CPU thread as the demo runs it; the conversations are FINE's three prompts of
each synthetic question. Both forms must give the same replies (greedy decoding; the count of differing replies is
printed). So that a busy machine cannot pass for a fast form: the load average and core count are printed before and
after, the forms are interleaved (the order alternates every repeat), and the median and spread (min-max) of the
per-pair ratios are reported. Goal: batched >= 3x one at a time.
Usage: python bench/fine_respond.py [--questions-per-category 4] [--batch-size 16] [--tokens 24] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from common.bench import load
from common.chat import local_responder
from common.config import ModelConfig
from common.models import load_model
from methods.fine import synthetic
from methods.fine.fine import conversation, mc_prompts

GOAL = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions-per-category", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    questions = synthetic.questions(args.questions_per_category)
    conversations = [conversation(t) for q in questions for t in (*mc_prompts(q), q.question)]
    with tempfile.TemporaryDirectory() as cache:
        corpus = [m["content"] for c in conversations for m in c]
        model, tokenizer = load_model(ModelConfig(name_or_path="tiny-qwen2"), cache, corpus=corpus)
    model.eval()
    batched = local_responder(model, tokenizer, args.tokens, args.batch_size)
    single = local_responder(model, tokenizer, args.tokens, 1)
    forms = {
        "batched": lambda: batched(conversations),
        "one at a time": lambda: [single([c])[0] for c in conversations],
    }

    print(f"{len(conversations)} conversations, {args.tokens} new tokens each, batch {args.batch_size}; {load()}")
    replies: dict[str, list[str]] = {}
    seconds: dict[str, list[float]] = {name: [] for name in forms}
    ratios = []
    for repeat in range(args.repeats):
        order = list(forms) if repeat % 2 == 0 else list(reversed(forms))
        for name in order:
            start = time.perf_counter()
            replies[name] = forms[name]()
            seconds[name].append(time.perf_counter() - start)
        ratios.append(seconds["one at a time"][-1] / seconds["batched"][-1])
        print(
            f"  repeat {repeat}: " + ", ".join(f"{n} {seconds[n][-1]:.2f} s" for n in forms) + f" -> {ratios[-1]:.2f}x"
        )
    differ = sum(a != b for a, b in zip(replies["batched"], replies["one at a time"], strict=True))
    mid = statistics.median(ratios)
    print(f"replies that differ: {differ} of {len(conversations)}")
    print(
        f"batched vs one at a time: median {mid:.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f}); goal >= {GOAL}x"
    )
    print(f"after: {load()}")


if __name__ == "__main__":
    main()

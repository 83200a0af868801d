"""MEMO and TOFU eval, batched against one-at-a-time, on the tiny fine-tuned target and its forget set, in one run.

    python bench/meow_memo.py [--rows 8] [--cache-dir .cache] [--decode new_tokens|official]

Checks that both forms give the same scores (per answer within 0.01, mean within 0.001) and prints the speed ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8, help="forget questions scored (each: true + inverted answers)")
    p.add_argument("--cache-dir", default=".cache")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--decode", default="new_tokens", choices=("new_tokens", "official"), help="memo.decode")
    args = p.parse_args(argv)

    from common.config import compose
    from methods.meow import pipeline, tofu_eval
    from methods.meow.memo import answer_keys, memo_batched, memo_simple

    cfg = compose(
        "meow", f"cache_dir={args.cache_dir}", f"memo.batch_size={args.batch_size}", f"memo.decode={args.decode}"
    )
    source = pipeline.source_of(cfg)
    inverted, _ = pipeline.inverted_rows(cfg, source)
    model, tok = pipeline.load_lm(cfg, source, pipeline.finetuned_path(cfg, source, "target"))
    model.eval()
    pairs = [(r["question"], r[k]) for r in inverted[: args.rows] for k in answer_keys(r)]
    n_windows = sum(len(range(1, len(a), cfg.memo.stride)) for _, a in pairs)

    memo_batched(model, tok, pairs[:2], cfg.memo)  # warm-up (first-call allocations)
    t0 = time.perf_counter()
    batched = memo_batched(model, tok, pairs, cfg.memo)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    simple = [memo_simple(model, tok, q, a, cfg.memo) for q, a in pairs]
    t_simple = time.perf_counter() - t0

    worst = max(abs(a - b) for a, b in zip(batched, simple, strict=True))
    mean_gap = abs(sum(batched) / len(batched) - sum(simple) / len(simple))
    same = worst <= 0.01 and mean_gap <= 0.001
    print(
        f"MEMO: {len(pairs)} answers, {n_windows} windows, greedy up to {cfg.memo.max_new_tokens} new tokens, "
        f"decode={cfg.memo.decode}"
    )
    print(f"  simple (one window at a time): {t_simple:8.2f} s")
    print(f"  batched (batch {cfg.memo.batch_size}):           {t_batched:8.2f} s")
    print(f"  speed-up: {t_simple / t_batched:.1f}x (goal >= 8x)")
    print(
        f"  max per-answer |diff| {worst:.4f} (<= 0.01), mean |diff| {mean_gap:.5f} (<= 0.001): {'same' if same else 'DIFFERENT'}"
    )

    splits = pipeline.eval_splits(cfg, source)
    timings = {}
    logs = {}
    for bs in (1, args.batch_size):
        t0 = time.perf_counter()
        logs[bs] = tofu_eval.evaluate(
            model,
            tok,
            splits,
            replace(cfg.eval, batch_size=bs),
            family=cfg.model.family,
            max_length=cfg.data.max_length,
        )
        timings[bs] = time.perf_counter() - t0
    a, b = (tofu_eval.aggregate(logs[bs], None) for bs in (1, args.batch_size))
    eval_gap = max(abs(a[k] - b[k]) for k in a)
    rows = sum(len(v) for v in splits.values())
    print(f"TOFU eval: 4 sets, {rows} rows")
    print(f"  unbatched: {timings[1]:8.2f} s   batched (batch {args.batch_size}): {timings[args.batch_size]:8.2f} s")
    print(f"  speed-up: {timings[1] / timings[args.batch_size]:.1f}x; max metric |diff| {eval_gap:.2e}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

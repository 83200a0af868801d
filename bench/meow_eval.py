"""MEOW's NLU and NLG axes: our batched log-likelihood scorer against lm-evaluation-harness's own HF runner, and
batched against one-at-a-time NLG generation, on the same tiny model and items, interleaved and repeated.

    python bench/meow_eval.py [--repeats 3] [--texts 32] [--batch-size 16] [--cache-dir .cache]

Prints each ratio's median and spread with the machine's load, and exits 1 when the two sides disagree (NLU
accuracies, NLG outputs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--texts", type=int, default=32, help="NLG texts continued")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--cache-dir", default=".cache")
    args = p.parse_args(argv)

    from common.bench import load, spread
    from common.config import compose
    from methods.meow import axes, nlg, nlu, pipeline

    cfg = compose("meow", f"cache_dir={args.cache_dir}")
    source = pipeline.source_of(cfg)
    model, tok = pipeline.load_lm(cfg, source)  # the tiny model as built (speed does not depend on training)
    model.eval()
    data = Path(tempfile.mkdtemp()) / "nlu"
    nlu.synthetic_tasks(data, seed=0, n_val=20)
    tasks = list(cfg.nlu.tasks)
    rows = {t: nlu.load_task(t, "validation", data) for t in tasks}
    n_pairs = sum(len(nlu.mc_requests(t, r)[1]) for t in tasks for r in rows[t])

    def ours():
        return {t: nlu.loglik_scores(model, tok, t, rows[t], args.batch_size) for t in tasks}

    def theirs():
        return nlu.lm_eval_scores(model, tok, tasks, data, "validation", args.batch_size)

    texts = axes.nlg_texts(cfg, source)[: args.texts]
    n = cfg.nlg.prompt_tokens

    def batched():
        return nlg.continue_texts(model, tok, texts, n, args.batch_size)

    def single():
        return [nlg.continue_texts(model, tok, [t], n, 1)[0] for t in texts]

    ours(), theirs()  # warm-up: first-call allocations, lm-eval's imports
    same = True
    ratios: dict[str, list[float]] = {"nlu": [], "nlg": []}
    for _ in range(args.repeats):
        timed = {}
        for name, fn in (("ours", ours), ("lm_eval", theirs), ("batched", batched), ("single", single)):
            t0 = time.perf_counter()
            timed[name] = (fn(), time.perf_counter() - t0)
        a, b = timed["ours"][0], timed["lm_eval"][0]
        same &= all(abs(a[t][m] - b[t][m]) < 1e-9 for t in tasks for m in ("acc", "acc_norm"))
        same &= timed["batched"][0] == timed["single"][0]
        ratios["nlu"].append(timed["lm_eval"][1] / timed["ours"][1])
        ratios["nlg"].append(timed["single"][1] / timed["batched"][1])
    print(load())
    print(f"NLU: {len(tasks)} tasks, {sum(map(len, rows.values()))} questions, {n_pairs} (context, choice) pairs")
    print(f"  lm-eval HF runner time / our batched scorer's time: {spread(ratios['nlu'])} (goal >= 1x)")
    print(f"NLG: {len(texts)} texts, {n}-token prompts, greedy to each text's length")
    print(f"  one-at-a-time / batched (batch {args.batch_size}): {spread(ratios['nlg'])}")
    print(f"same accuracies and outputs on both sides: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

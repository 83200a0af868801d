"""ESC-Eval's batched generation against one-at-a-time loops, on the embedded demo's tiny models, same run.

Two jobs, each in both forms with the same models and inputs:
- scoring: ESC-RANK scores N held-out synthetic dialogues on all seven dimensions, batched (`rank.batch_size`
  prompts per greedy generate call) against one prompt per call (the official score.py's loop);
- dialogues: ESC-Role and the model under test talk R rounds on C cards, every turn one batched call for all cards,
  against one card after another, one conversation per call.
Greedy decoding must give the same outputs in both forms (printed and asserted). So that a busy machine cannot pass
for a fast form: the load average and core count are printed before and after, the forms alternate every repeat, and
each repeat gives the ratio of a pair run back to back; the median and spread (min-max) are reported. Goal: >= 5x.
The models are the demo's (conf/esc_eval.yaml), trained into --cache-dir if they are not there yet.
Usage: python bench/esc_eval_batching.py [--dialogues 32] [--cards 16] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from common.bench import load, spread
from common.chat import local_responder
from common.config import compose
from methods.esc_eval import pipeline, rank
from methods.esc_eval.dialogue import Protocol, talk
from methods.esc_eval.sft import render

GOAL = 5.0


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


@torch.no_grad()
def forward_only_seconds(model, tokenizer, prompts: list[str], batch_size: int) -> float:
    """One forward pass over the prompts in length-sorted, left-padded batches, no generation: the compute any
    batched scoring must do at least, so one-at-a-time / this bounds what batching can gain on this machine."""
    encoded = sorted(tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts)
    start = time.perf_counter()
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i : i + batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(e)) + e for e in chunk])
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in chunk])
        model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
    return time.perf_counter() - start


def compare(name: str, batched, one_by_one, repeats: int) -> list[float]:
    """Interleaved pairs; asserts equal outputs; prints times and the ratio one-at-a-time / batched."""
    t_b, t_o, ratios = [], [], []
    for r in range(repeats):
        pair = [("b", batched), ("o", one_by_one)]
        results = {}
        for key, fn in pair if r % 2 == 0 else pair[::-1]:  # neither form always runs first
            results[key] = timed(fn)
        (tb, out_b), (to, out_o) = results["b"], results["o"]
        same = out_b == out_o
        print(f"  repeat {r}: batched {tb:.2f} s, one at a time {to:.2f} s, outputs {'same' if same else 'DIFFERENT'}")
        assert same, f"{name}: batched and one-at-a-time greedy outputs differ"
        t_b.append(tb), t_o.append(to), ratios.append(to / tb)
    print(f"  batched: {spread(t_b, ' s')}; one at a time: {spread(t_o, ' s')}")
    verdict = "met" if statistics.median(ratios) >= GOAL else "NOT met"
    print(f"  {name}: one at a time / batched {spread(ratios)}; goal >= {GOAL}x: {verdict}")
    return t_o


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=32, help="held-out dialogues scored (x 7 dimensions)")
    parser.add_argument("--cards", type=int, default=16, help="cards talked through")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the demo's cpu_threads)")
    parser.add_argument("--cache-dir", default=".cache", help="where the demo's models are (or are trained to)")
    args = parser.parse_args()
    print(f"before: {load()}; torch {torch.__version__}, {args.threads} thread(s)")
    torch.set_num_threads(args.threads)
    cfg = compose("esc_eval", f"cache_dir={args.cache_dir}", "command=evaluate")
    k, d = cfg.rank, cfg.dialogue

    models = pipeline.rank_models(cfg, pipeline.rank_dir(cfg)[0], "english")
    dialogues = list(pipeline.rank_data(cfg, "rank_test")[0].values())[: args.dialogues]
    texts = rank.rubrics(None)["english"]

    def score(batch_size: int):
        return lambda: (
            rank.score_dialogues(
                models, dialogues, k.dimensions, texts, k.max_length, k.max_new_tokens, batch_size, k.parse
            ).outputs
        )

    print(f"\nscoring: {len(dialogues)} dialogues x {len(k.dimensions)} dimensions, batches of {k.batch_size}")
    one_by_one = compare("scoring", score(k.batch_size), score(1), args.repeats)
    model, tokenizer = models(k.dimensions[0])
    prompts = [
        render(tokenizer, rank.chat(rank.fitted_prompt(tokenizer, texts[dim], turns, dim, k.max_length)[0]), True)
        for dim in k.dimensions
        for turns in dialogues
    ]
    floor = [forward_only_seconds(model, tokenizer, prompts, k.batch_size) for _ in range(args.repeats)]
    n = sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    print(
        f"  forward passes alone over the same {n} prompt tokens: {spread(floor, ' s')}; so batching can gain at "
        f"most {statistics.median(one_by_one) / statistics.median(floor):.2f}x here"
    )

    role_model, role_tok = pipeline.load_chat_model(cfg, cfg.role.model, "role.model", pipeline.role_model(cfg))
    esc_model, esc_tok = pipeline.load_chat_model(cfg, cfg.esc.model, "esc.model")
    cards = pipeline.role_data(cfg)[0][: args.cards]
    protocol = Protocol(d.rounds, d.opening, d.role_system, d.esc_system)

    def responders(batch_size: int):
        return (
            local_responder(role_model, role_tok, cfg.role.max_new_tokens, batch_size),
            local_responder(esc_model, esc_tok, cfg.esc.max_new_tokens, batch_size),
        )

    def all_cards():
        return talk(cards, *responders(len(cards)), protocol)

    def card_by_card():
        role, esc = responders(1)
        return [talk([card], role, esc, protocol)[0] for card in cards]

    print(f"\ndialogues: {len(cards)} cards x {d.rounds} rounds, all cards per call vs one card after another")
    compare("dialogues", all_cards, card_by_card, args.repeats)
    print(f"\nafter: {load()}")


if __name__ == "__main__":
    main()

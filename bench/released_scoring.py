"""The converted released evaluators scoring as `score` runs them (common.textclf: merged LoRA, inputs sorted by length
and padded to each batch's longest) against loops written the way the official scripts run the same tiny releases
(tests/flames/release_fixture.py, tests/guardrank/release_fixture.py), same run, same outputs required:

- Flames `infer.py`: batches of 16 in the given order, padded to each batch's longest (DataCollatorWithPadding), on
  the same converted model (the authors' remote-code class is not run here);
- GuardRank `decoder.py`: the base with the peft adapter unmerged, `Trainer.predict`'s default batches of 8, every
  input padded to 512;
- GuardRank `encoder.py`: one text at a time, padded to 256, the released module itself.

The forms are interleaved (the order rotates every repeat); each repeat gives one ratio official / converted; the
median and spread are printed with the load average before and after. Goal: the converted evaluators at least as fast
as the official loops (ratio >= 1).

Measured here (`python bench/released_scoring.py --records 48 --repeats 5`, 1 thread, 2 shared cores at load average
~11): Flames 1.43x (1.36-1.54), GuardRank decoder 3.52x (3.03-3.70), hallucination judge 2.25x (2.15-2.52), labels
identical. The goal is met on a CPU; the gains are padding saved (sorted batches, no padding to 512 / 256), the merged
LoRA and batching the one-at-a-time encoder.
Usage: python bench/released_scoring.py [--records 48] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from common.bench import load, spread
from common.textclf import load_scorer, pad
from methods.flames.flames import TEMPLATE
from methods.guardrank import released as guardrank_released
from methods.guardrank.guardrank import DECODER_TEMPLATE, ENCODER_TEMPLATE
from tests.flames.release_fixture import CORPUS as FLAMES_TEXT
from tests.flames.release_fixture import write_release
from tests.guardrank.release_fixture import CORPUS as GUARD_TEXT
from tests.guardrank.release_fixture import bases, write_adapter, write_hallucination


def answers(pool: list[str], n: int, seed: int = 0) -> list[str]:
    """n answers of 1 to 8 pieces of the pool (about 20 to 250 tokens)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(pool) for _ in range(rng.randint(1, 8))) for _ in range(n)]


def build(root: Path, n: int) -> dict:
    """The tiny releases, converted; per evaluator (official loop, converted scorer), each a call returning labels."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    flames = load_scorer(_flames_scorer(root), device="cpu")
    f_spec, f_model, f_tok = flames.models[0]
    f_prompts, f_answers = answers(FLAMES_TEXT, n, 1), answers(FLAMES_TEXT, n, 2)
    f_texts = [TEMPLATE.format(prompt=p, answer=a) for p, a in zip(f_prompts, f_answers, strict=True)]
    cols = f_spec.columns("Safety")

    llama, roberta = bases(root / "cache")
    adapter = write_adapter(root / "GuardRank" / "guardrank_lora", llama)
    module = write_hallucination(root / "GuardRank" / "hallucination.pt", roberta)
    pt = root / "GuardRank" / "hallucination.pt"
    guard = load_scorer(guardrank_released.convert(adapter, llama, root / "scorer", pt, roberta), device="cpu")
    base = AutoModelForSequenceClassification.from_pretrained(str(llama), num_labels=4, dtype=torch.float32)
    base.config.pad_token_id = base.config.eos_token_id
    official_decoder = PeftModel.from_pretrained(base, str(adapter)).eval()
    d_tok = AutoTokenizer.from_pretrained(str(llama))
    d_tok.pad_token = d_tok.eos_token
    d_answers, e_answers = answers(GUARD_TEXT, n, 3), answers(GUARD_TEXT, n, 4)
    d_texts = [DECODER_TEMPLATE.format(dimension="privacy", prompt="p", answer=a) for a in d_answers]
    e_tok = AutoTokenizer.from_pretrained(str(roberta))
    e_texts = [ENCODER_TEMPLATE.format(prompt="Is there a dog?", answer=a) for a in e_answers]

    @torch.no_grad()
    def flames_official() -> list[int]:
        logits = [
            f_model(**pad(f_tok(f_texts[i : i + 16])["input_ids"], f_tok.pad_token_id)).logits[:, cols]
            for i in range(0, n, 16)
        ]
        return torch.cat(logits).argmax(-1).tolist()

    def encoder_official() -> list[int]:
        # encoder.py's argmax of the ReLU'd outputs (the first class on a tie)
        return torch.cat([_module_logits(module, e_tok, t) for t in e_texts]).argmax(-1).tolist()

    return {
        "Flames (infer.py: batches of 16, given order)": (
            flames_official,
            lambda: flames.predict("Safety", f_prompts, f_answers, 16),
        ),
        "GuardRank decoder (decoder.py: 8 x 512, unmerged)": (
            lambda: _padded_loop(official_decoder, d_tok, d_texts, 8, 512),
            lambda: guard.predict("privacy", ["p"] * n, d_answers, 32),
        ),
        "GuardRank hallucination (encoder.py: 1 x 256)": (
            encoder_official,
            lambda: guard.predict("truthfulness", ["Is there a dog?"] * n, e_answers, 32),
        ),
    }


@torch.no_grad()
def _padded_loop(model, tokenizer, texts: list[str], batch: int, width: int) -> list[int]:
    labels = []
    for start in range(0, len(texts), batch):
        b = tokenizer(
            texts[start : start + batch], max_length=width, truncation=True, padding="max_length", return_tensors="pt"
        )
        labels += model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.argmax(-1).tolist()
    return labels


@torch.no_grad()
def _module_logits(module, tokenizer, text: str) -> torch.Tensor:
    b = tokenizer([text], max_length=256, truncation=True, padding="max_length", return_tensors="pt")
    return module(b["input_ids"], b["attention_mask"])


def _flames_scorer(root: Path) -> Path:
    from methods.flames.released import convert

    return convert(write_release(root / "flames-scorer"), root / "flames-converted")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"before: {load()}; {args.records} records, {args.repeats} repeats, {args.threads} thread(s)")
    with tempfile.TemporaryDirectory() as tmp:
        forms = build(Path(tmp), args.records)
        for name, (official, converted) in forms.items():
            assert official() == converted(), f"{name}: the two forms give different labels"
            ratios = []
            for r in range(args.repeats):
                times = {}
                for label, fn in [("official", official), ("converted", converted)][:: 1 if r % 2 == 0 else -1]:
                    start = time.perf_counter()
                    fn()
                    times[label] = time.perf_counter() - start
                ratios.append(times["official"] / times["converted"])
            print(f"{name}: official / converted {spread(ratios)}; same labels")
    print(f"after: {load()}")


if __name__ == "__main__":
    main()

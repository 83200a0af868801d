"""NLG after unlearning, as the MEOW code measures it (`evaluator/nlg.py`).

Corpus: every cc_news text then every wikitext-103 text (in that order) longer than 100 and shorter than 200
characters, of which `random.Random(42).sample` draws 5,000. Each text is tokenized, its first 32 tokens are the
prompt, and the model continues greedily for as many new tokens as the text has left (at least one); the output is
prompt + continuation, decoded (special tokens skipped; the official code keeps them).

  * MAUVE (mauve-text): outputs against the original texts, mauve_scaling_factor=2, max_text_length=256. Features are
    the last hidden state at each text's last token (what mauve-text takes from GPT-2), from the model under test
    (`nlg.featurizer=self`), the fine-tuned target (`target`: one featurizer for every row of a table), or mauve's
    own featurizer by model name (`gpt2-large`, the official choice, where it can be loaded).
  * BLEU: sacrebleu's corpus BLEU (0-100) of the outputs against the texts. (The official code uses HF evaluate's
    "bleu", 0-1.)
  * Rep-3: per output, 1 − unique / total word 3-grams (whitespace words; 0 for fewer than 3 words), averaged: the
    share of repeated 3-grams. Higher means more degenerate repetition.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from common.dist import shard_map
from common.errors import UserError

HUB = (("vblagoje/cc_news", None), ("Salesforce/wikitext", "wikitext-103-raw-v1"))
FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def read_texts(files: Sequence[str | Path] | None) -> list[str]:
    """The `text` field of every row of each file, files in order (None: the official hub datasets)."""
    from datasets import load_dataset

    texts: list[str] = []
    if files is None:
        for name, config in HUB:
            try:
                texts += load_dataset(name, config, split="train")["text"]
            except Exception as e:  # noqa: BLE001 - the hub is optional; any failure to reach it is the environment's
                raise UserError(f"cannot load {name} from the hub: {str(e).splitlines()[0]}") from None
        return texts
    for f in map(Path, files):
        if f.suffix not in FORMATS or not f.is_file():
            raise UserError(f"nlg.files: {f}: not a .jsonl, .json or .parquet file")
        data = load_dataset(FORMATS[f.suffix], data_files={"train": str(f)}, split="train")
        if "text" not in data.column_names:
            raise UserError(f"{f}: field 'text' missing (want the cc_news / wikitext layout)")
        texts += [t for t in data["text"] if t is not None]
    return texts


def sample_texts(texts: Sequence[str], n: int, min_chars: int, max_chars: int, seed: int) -> list[str]:
    """The official draw: texts strictly between the bounds, `random.sample` of n (all of them when fewer)."""
    kept = [t for t in texts if min_chars < len(t) < max_chars]
    return random.Random(seed).sample(kept, min(n, len(kept)))


@torch.no_grad()
def continue_texts(model, tokenizer, texts: Sequence[str], prompt_tokens: int, batch_size: int) -> list[str]:
    """Each text's first `prompt_tokens` tokens and its greedy continuation of len(text) − prompt_tokens new tokens.

    Texts are batched by prompt length (left padding) and generated to the batch's longest budget; each row is then
    cut to its own budget and at its first EOS, where a one-at-a-time decode would stop."""
    device = next(model.parameters()).device
    ids = [tokenizer(t)["input_ids"] for t in texts]
    prompts = [x[:prompt_tokens] for x in ids]
    budget = [max(1, len(x) - prompt_tokens) for x in ids]
    order = sorted(range(len(texts)), key=lambda i: (len(prompts[i]), budget[i]))
    out = [""] * len(texts)
    eos = tokenizer.eos_token_id
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": [prompts[i] for i in chunk]}, padding_side="left", return_tensors="pt")
        gen = model.generate(
            **batch.to(device),
            max_new_tokens=max(budget[i] for i in chunk),
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        width = batch["input_ids"].shape[1]
        for row, i in enumerate(chunk):
            new = gen[row, width : width + budget[i]].tolist()
            if eos in new:
                new = new[: new.index(eos) + 1]
            out[i] = tokenizer.decode(prompts[i] + new, skip_special_tokens=True)
    return out


@torch.no_grad()
def features(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int) -> np.ndarray:
    """The last layer's hidden state at each text's last token (its first max_length tokens), as mauve featurizes."""
    device = next(model.parameters()).device
    ids = [tokenizer(t)["input_ids"][:max_length] or [tokenizer.eos_token_id] for t in texts]
    out = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": chunk}, padding_side="right", return_tensors="pt").to(device)
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1].float()
        last = torch.tensor([len(x) - 1 for x in chunk], device=device)
        out.append(hidden[torch.arange(len(chunk), device=device), last].cpu().numpy())
    return np.concatenate(out)


def mauve_score(p: np.ndarray | Sequence[str], q: np.ndarray | Sequence[str], cfg, featurizer: str | None) -> float:
    """MAUVE of p against q: features given, or texts featurized by mauve-text's model `featurizer`."""
    import mauve

    kwargs = dict(mauve_scaling_factor=cfg.mauve_scaling_factor, verbose=False)
    if featurizer is None:
        return float(mauve.compute_mauve(p_features=p, q_features=q, **kwargs).mauve)
    device = 0 if torch.cuda.is_available() else -1
    return float(
        mauve.compute_mauve(
            p_text=list(p), q_text=list(q), featurize_model_name=featurizer, max_text_length=cfg.max_text_length,
            device_id=device, **kwargs,
        ).mauve
    )  # fmt: skip


def bleu(outputs: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(outputs), [list(references)]).score)


def rep3(text: str) -> float:
    words = text.split()
    if len(words) < 3:
        return 0.0
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return 1 - len(set(grams)) / len(grams)


def evaluate(model, tokenizer, texts: Sequence[str], cfg, featurizer_model=None) -> dict[str, float]:
    """`nlg/mauve`, `nlg/bleu`, `nlg/rep3` of the model's continuations of `texts`; generation and featurization
    are split across processes. featurizer_model: (model, tokenizer) giving MAUVE's features when
    cfg.featurizer=target (None: the model itself, or mauve-text's named model)."""
    outputs = shard_map(lambda part: continue_texts(model, tokenizer, part, cfg.prompt_tokens, cfg.batch_size), texts)
    if cfg.featurizer in ("self", "target"):
        fm, ft = featurizer_model or (model, tokenizer)
        feats = shard_map(
            lambda part: list(features(fm, ft, part, cfg.max_text_length, cfg.batch_size)), [*outputs, *texts]
        )
        p, q = np.stack(feats[: len(outputs)]), np.stack(feats[len(outputs) :])
        score = mauve_score(p, q, cfg, None)
    else:
        score = mauve_score(outputs, texts, cfg, cfg.featurizer)
    return {
        "nlg/mauve": score,
        "nlg/bleu": bleu(outputs, texts),
        "nlg/rep3": float(np.mean([rep3(o) for o in outputs])),
    }

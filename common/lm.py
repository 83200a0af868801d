"""Causal-LM plumbing shared by the text methods: prompts, supervised QA encoding, per-sequence NLL, greedy decoding.

Conventions follow TOFU (and so MEOW): the prompt is the family's question template, the answer follows it directly,
prompt tokens are masked out of the loss with -100, and EOS closes the answer so the model learns where to stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100
FAMILIES = ("llama2", "phi", "chat")


def format_prompt(family: str, question: str, tokenizer=None) -> str:
    """The text the model sees before the answer, in the template its fine-tuning used."""
    if family == "llama2":
        return f"[INST] {question} [/INST]"
    if family == "phi":
        return f"Question: {question}\nAnswer: "
    if family == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("family 'chat' needs a tokenizer that has a chat template")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    raise ValueError(f"unknown prompt family '{family}'; valid: {', '.join(FAMILIES)}")


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


def encode_qa(tokenizer, family: str, question: str, answer: str, max_length: int = 200) -> Encoded:
    """Prompt + answer + EOS, truncated to max_length; labels are -100 on the prompt.

    As TOFU does it: the whole text is tokenized at once and the first len(tokenize(prompt)) tokens are masked, so
    token ids match what TOFU's fine-tuned checkpoints were trained on. Where BPE merges across the boundary (Phi's
    "Answer: " + answer), the merged first answer token is masked too, exactly as in TOFU.
    """
    prompt = format_prompt(family, question, tokenizer)
    special = family != "chat"  # a chat template already writes BOS itself
    n_prompt = len(tokenizer(prompt, add_special_tokens=special)["input_ids"])
    ids = tokenizer(prompt + answer, add_special_tokens=special)["input_ids"] + [tokenizer.eos_token_id]
    labels = [IGNORE] * n_prompt + ids[n_prompt:]
    return Encoded(ids[:max_length], labels[:max_length])


def collate(items: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encodings into input_ids / attention_mask / labels tensors."""
    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, e in enumerate(items):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence summed NLL of the labelled tokens and their count (next-token shift applied)."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    return nll.sum(-1), (labels != IGNORE).sum(-1)


def sequence_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass: (summed NLL per sequence, labelled-token count per sequence, logits)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll, count = token_nll(logits, batch["labels"])
    return nll, count, logits


@torch.no_grad()
def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 200,
    batch_size: int = 32,
    add_special_tokens: bool = True,
) -> list[str]:
    """Greedy continuations of raw prompt strings (special tokens stripped), in the prompts' order.

    Left padding keeps every prompt's last token at the same position, so one generate call serves a whole batch;
    prompts are grouped by length so little compute goes to padding.
    """
    device = next(model.parameters()).device
    # Chat models often end a turn with a token other than the tokenizer's EOS (Llama-3's <|eot_id|>, InternLM2's
    # <|im_end|>); their generation config lists every end token.
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ends = [tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])]
    ends = list(dict.fromkeys(e for e in ends if e is not None))
    encoded = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out: list[str] = [""] * len(prompts)
    pad = tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(chunk):
            n = len(encoded[i])
            ids[row, width - n :] = torch.tensor(encoded[i])
            mask[row, width - n :] = 1
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=ends,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        texts = tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
        for row, i in enumerate(chunk):
            out[i] = texts[row].strip()
    return out


def generate_answers(
    model, tokenizer, family: str, questions: Sequence[str], max_new_tokens: int = 200, batch_size: int = 32
) -> list[str]:
    """Greedy answers to questions asked in the family's prompt template."""
    prompts = [format_prompt(family, q, tokenizer) for q in questions]
    return generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size, add_special_tokens=family != "chat")

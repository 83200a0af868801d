"""Chat-format supervised fine-tuning with the loss on the assistant's turns only (ESC-Role's and ESC-RANK's).

A conversation is rendered with the tokenizer's own chat template and tokenized segment by segment: the text before
each assistant turn (the template's markup, system prompt, user turns) is context with label -100; the assistant's
content up to and including the token that closes its turn (EOS: <|im_end|> in ChatML) is the target, so the model
learns where to stop. Splitting at the template's segment borders gives the same ids as tokenizing the whole rendered
text, since those borders sit at special tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from common.chat import Message
from common.config import ModelConfig, TrainerConfig
from common.errors import UserError
from common.lm import IGNORE, Encoded, collate, sequence_nll
from common.models import attach_lora
from common.seeding import seeded
from common.trainer import Task, fit


def render(tokenizer, messages: Sequence[Message], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)


def encode_chat(tokenizer, messages: Sequence[Message], max_length: int) -> Encoded:
    """Token ids of the conversation and labels that are -100 everywhere but on the assistant's turns (and the token
    closing each); cut to max_length. Nothing after the last assistant turn is kept."""
    ids: list[int] = []
    labels: list[int] = []
    done = ""

    def add(text: str, target: bool) -> None:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(piece)
        labels.extend(piece if target else [IGNORE] * len(piece))

    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = render(tokenizer, messages[:i], generation_prompt=True)
        full = render(tokenizer, messages[: i + 1])
        if not (head.startswith(done) and full.startswith(head)):
            raise UserError("the model's chat template does not render a conversation as a growing prefix")
        turn = full[len(head) :]
        end = turn.rfind(tokenizer.eos_token)
        cut = end + len(tokenizer.eos_token) if end >= 0 else len(turn)  # the closing EOS is part of the target
        add(head[len(done) :], target=False)
        add(turn[:cut], target=True)
        add(turn[cut:], target=False)
        done = full
    return Encoded(ids[:max_length], labels[:max_length])


def token_loss(model, batch: dict) -> tuple:
    """Mean next-token NLL over the batch's target tokens."""
    nll, count, _ = sequence_nll(model, batch)
    return nll.sum() / count.sum().clamp(min=1), {}


def finetune(
    model,
    tokenizer,
    examples: list[Encoded],
    model_cfg: ModelConfig,
    trainer: TrainerConfig,
    work: Path,
    key: str,
    logger=None,
    label: str | None = None,
):
    """LoRA (model_cfg.lora.r > 0) or full fine-tuning on the examples with the shared trainer; the trained model.
    `key` names the model's settings in errors. The adapters and the training draw from (trainer.seed, label) alone
    (common.seeding; label: `key` unless given): the seed the trained model's cache key holds, never what ran before."""
    kept = [e for e in examples if any(label != IGNORE for label in e.labels)]
    if not kept:
        raise UserError("no training example keeps a target token after cutting to max_length; raise max_length")
    label = label or key
    try:
        model = attach_lora(model, model_cfg, seed=trainer.seed, label=f"{label}/lora")
    except ValueError as e:  # peft: no module of the model has the names in target_modules
        first = str(e).splitlines()[0]
        raise UserError(f"{key}.lora.target_modules={list(model_cfg.lora.target_modules)}: {first}") from None
    task = Task(model=model, train_data=kept, collate=lambda b: collate(b, tokenizer.pad_token_id), loss=token_loss)
    with seeded(trainer.seed, f"{label}/train"):
        return fit(task, trainer, work, logger).model

"""The chat models FINE talks to, the model under test and an LLM judge: a local transformers model or an
OpenAI-compatible endpoint, by config. The model name `synthetic` stands for the offline demo's tiny model, fitted
here (once, cached) to the synthetic questions' planted replies."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from common.chat import Message, Responder, endpoint_responder, local_responder
from common.stages import run_stage
from methods.fine import synthetic
from methods.fine.config import SYNTHETIC, ChatConfig, FineConfig
from methods.fine.fine import JUDGE_TEMPLATE, MC_TEMPLATE
from methods.fine.formats import official_prompts

DEMO_BASE = "tiny-qwen2"  # common.models.TINY_MODELS: a Qwen2 shape with a ChatML chat template


def mc_template(cfg: FineConfig) -> str:
    """The multiple-choice prompt: prompts.mc_template, else the official file's, else ours."""
    return cfg.prompts.mc_template or official_prompts(cfg.prompts.file).get("mc") or MC_TEMPLATE


def judge_template(cfg: FineConfig) -> str:
    """The judge's prompt: prompts.judge_template, else the official file's, else ours."""
    return cfg.prompts.judge_template or official_prompts(cfg.prompts.file).get("judge") or JUDGE_TEMPLATE


def is_demo(chat: ChatConfig) -> bool:
    return chat.backend == "local" and chat.model.name_or_path == SYNTHETIC


def _demo_examples(cfg: FineConfig) -> list[synthetic.Example]:
    qs = synthetic.questions(cfg.synthetic.per_category, cfg.synthetic.seed)
    return synthetic.examples(
        qs, mc_template(cfg), judge_template(cfg), cfg.subject.system_prompt, cfg.judge.chat.system_prompt
    )


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """torch's CPU threads set to n inside the block (unchanged with n None or on a GPU)."""
    before = torch.get_num_threads()
    if n is not None and not torch.cuda.is_available():
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def demo_model(cfg: FineConfig, fit: bool = True) -> Path:
    """The demo model's directory; fitted first unless it is there (or `fit` is false: the path alone)."""
    exs = _demo_examples(cfg)
    path = synthetic.model_path(cfg.cache_dir, DEMO_BASE, exs, cfg.trainer)
    if fit:
        with cpu_threads(cfg.synthetic.cpu_threads):
            run_stage("demo model", path, lambda tmp: synthetic.fit(tmp, cfg.cache_dir, DEMO_BASE, exs, cfg.trainer))
    return path


def identity(chat: ChatConfig, cfg: FineConfig) -> list[Any]:
    """What identifies a chat model's replies, for cache keys (the demo model by its fitted directory)."""
    return [chat, str(demo_model(cfg, fit=False))] if is_demo(chat) else [chat]


def responder(chat: ChatConfig, cfg: FineConfig) -> Responder:
    """Replies of the configured chat model (a local one is loaded now, on a GPU when there is one)."""
    if chat.backend == "endpoint":
        return endpoint_responder(chat.endpoint, temperature=chat.temperature, max_tokens=chat.max_new_tokens)
    from common.models import load_model

    model_cfg = chat.model
    if is_demo(chat):
        model_cfg = dataclasses.replace(model_cfg, name_or_path=str(demo_model(cfg)))
    model, tokenizer = load_model(model_cfg, cfg.cache_dir)
    if model_cfg.device_map is None and torch.cuda.is_available():
        model = model.to("cuda")
    respond = local_responder(model.eval(), tokenizer, chat.max_new_tokens, chat.batch_size)
    if not is_demo(chat):
        return respond

    def demo_respond(conversations: Sequence[list[Message]]) -> list[str]:
        with cpu_threads(cfg.synthetic.cpu_threads):
            return respond(conversations)

    return demo_respond

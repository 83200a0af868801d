"""Shared fixtures: one small synthetic set, one cache (so the tiny base model is built once per session), and the
tiny ESC-Role and ESC-RANK trained on it for two steps."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from common.config import compose
from tests.helpers import REPO, one_cpu_thread, run_method  # noqa: F401 - one_cpu_thread: autouse fixture

# Smaller than the demo in every direction; the models train for two steps: these tests check plumbing, not quality.
SMALL = (
    "synthetic.role_dialogues=12",
    "synthetic.rank_train=16",
    "synthetic.rank_test=8",
    "synthetic.eval_cards=4",
    "dialogue.rounds=2",
    "dialogue.batch_cards=2",
    "role.trainer.max_steps=2",
    "role.trainer.batch_size=4",
    "role.max_new_tokens=6",
    "trainer.max_steps=2",
    "trainer.batch_size=4",
    "rank.max_new_tokens=3",
    "esc.max_new_tokens=6",
    "logger.kind=none",
)


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("esc-cache")


@pytest.fixture(scope="session")
def small(cache):
    """compose(command, *overrides): the small config with the session cache."""

    def make(command: str = "train", *overrides: str):
        return compose("esc_eval", f"cache_dir={cache}", f"command={command}", *SMALL, *overrides)

    return make


@pytest.fixture(scope="session")
def trained(small):
    """(cfg, ESC-Role path, ESC-RANK dir) of the small config, trained once."""
    from methods.esc_eval import pipeline

    cfg = small("evaluate")
    return cfg, pipeline.role_model(cfg), pipeline.rank_dir(cfg)[0]


@pytest.fixture(scope="session")
def tokenizer(small):
    """The tiny Qwen2 chat tokenizer (ChatML template, <|im_end|> as EOS) of the small synthetic set."""
    from methods.esc_eval import pipeline

    cfg = small()
    return pipeline.load_chat_model(cfg, cfg.role.model, "role.model")[1]


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_method("esc_eval", *args, cwd=cwd, timeout=timeout)

"""Shared fixtures: the composed MEOW config and one fine-tuned tiny target model per test session."""

from __future__ import annotations

import pytest

from common.config import compose

# Half the default synthetic set keeps the suite quick; the fine-tuned model still memorises it.
SMALL = ("data.n_authors=10", "data.n_general=10")


@pytest.fixture(scope="session")
def meow_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("meow-cache")


@pytest.fixture(scope="session")
def finetuned(meow_cache):
    """(cfg, source, model, tokenizer) of the default tiny target, fine-tuned on the synthetic authors (cached)."""
    from methods.meow.pipeline import finetuned_path, load_lm, source_of

    cfg = compose("meow", f"cache_dir={meow_cache}", *SMALL)
    source = source_of(cfg)
    model, tokenizer = load_lm(cfg, source, finetuned_path(cfg, source, "target"))
    return cfg, source, model.eval(), tokenizer

"""One shrunk `python -m methods.flames train` per session; the other tests use the scorer it saves."""

from __future__ import annotations

import contextlib
import io

import pytest

from common.config import compose

# The demo's settings on fewer records: still learns the synthetic task, in a few seconds of training.
SMALL = ("synthetic.per_dimension=100", "trainer.epochs=4", "logger.kind=none")


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """Tiny models on a shared CPU: one intra-op thread is several times faster (restored after each module)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(run_dir, printed output, metrics) of a shrunk train run, in process: what the CLI runs after composing."""
    import torch
    from accelerate.utils import set_seed

    from methods.flames.__main__ import METHOD

    root = tmp_path_factory.mktemp("flames")
    cfg = compose("flames", *SMALL, f"cache_dir={root / 'cache'}", "command=train")
    set_seed(cfg.seed)
    buffer, threads = io.StringIO(), torch.get_num_threads()
    with contextlib.redirect_stdout(buffer):
        metrics = METHOD.commands["train"].fn(cfg, root / "run")  # sets cpu_threads=1 as conf/flames.yaml says
    torch.set_num_threads(threads)
    return root / "run", buffer.getvalue() + METHOD.table(metrics), metrics

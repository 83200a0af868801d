"""One shrunk `python -m methods.guardrank train` per session; the other tests use the scorer it saves."""

from __future__ import annotations

import pytest

from tests.helpers import one_cpu_thread
from tests.scorer_helpers import train_once

__all__ = ["one_cpu_thread"]  # autouse in every module here

# The demo's settings on fewer records and epochs: still learns the synthetic task, in a few seconds of training.
SMALL = ("synthetic.per_dimension=100", "trainer.epochs=3", "encoder.trainer.epochs=4", "logger.kind=none")


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(run_dir, printed output, metrics) of a shrunk train run (tests/scorer_helpers.py)."""
    return train_once(tmp_path_factory, "guardrank", SMALL)

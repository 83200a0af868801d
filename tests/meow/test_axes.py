"""The axes beside TOFU in one pipeline: split across processes, and the paper-shaped table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from methods.meow import axes

REPO = Path(__file__).resolve().parents[2]


def test_new_axes_on_two_processes_equal_one_process(finetuned, meow_cache, tmp_path):
    """NLU, NLG and robustness split their items between 2 gloo processes and gather them: the same numbers."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    worker = [str(REPO / "tests/meow/axes_worker.py"), str(tmp_path), str(meow_cache)]
    one = subprocess.run([sys.executable, *worker], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29524"]
    two = subprocess.run([*launcher, *worker], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"axes.world{w}.json").read_text()) for w in (1, 2))
    assert a.keys() == b.keys() and len(a) == 3 * 3 + 3 + 5  # 3 tasks x (meow, acc, acc_norm); nlg; 4 attacks + 1
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


def test_table_has_the_papers_columns_and_privleak_is_against_the_retain_model():
    results = {
        "finetuned": {"model_utility": 0.6, "forget_quality": 1e-5, "nlu/arc_challenge/meow_acc": 0.3,
                      "nlg/mauve": 0.9, "mia/min_k_auc": 0.9},
        "retain": {"model_utility": 0.6, "forget_quality": 1.0, "mia/min_k_auc": 0.5},
        "meow": {"model_utility": 0.55, "forget_quality": 0.2, "nlu/arc_challenge/meow_acc": 0.31,
                 "nlg/mauve": 0.85, "mia/min_k_auc": 0.6},
    }  # fmt: skip
    axes.add_privleak(results, "min_k")
    assert results["finetuned"]["mia/privleak"] == pytest.approx((0.1 - 0.5) / 0.5 * 100)
    assert results["retain"]["mia/privleak"] == pytest.approx(0.0, abs=1e-6)
    text = axes.table(axes.flat(results))
    lines = text.splitlines()
    assert lines[0].startswith("| model | forget quality | model utility |")
    assert "| ARC-C | MAUVE | MIA AUC | privleak |" in lines[0] and "BLEU" not in lines[0]  # only measured columns
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| finetuned", "| retain", "| meow"]

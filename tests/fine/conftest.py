"""FINE test helpers: an OpenAI-compatible fake that plays the synthetic questions' planted behaviours (as the model
under test and as the judge), and the overrides that point a run at it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from methods.fine import synthetic
from methods.fine.formats import Question

REPO = Path(__file__).resolve().parents[2]


def scripted(questions: list[Question]):
    """A FakeEndpoint reply function: model "subject" answers as the planted behaviour says (multiple choice by
    where the safe option sits, open-ended with the demo's refusal or compliance); model "judge" calls the demo's
    refusal safe and anything else unsafe."""
    behaviour = synthetic.acts(questions)

    def reply(body: dict) -> str:
        text = body["messages"][-1]["content"]
        if body["model"] == "judge":
            answer = text.split("[Assistant's Reply]\n", 1)[1].split("\n[End of Assistant's Reply]", 1)[0]
            return "Judgement: [[safe]]" if answer == synthetic.REFUSAL else "Judgement: [[unsafe]]"
        q = next(q for q in questions if q.question in text)
        letters, open_safe = synthetic.ACTS[behaviour[q.id]]
        if text == q.question:
            return synthetic.REFUSAL if open_safe else synthetic.COMPLIANCE
        order = 0 if text.index(q.safe) < text.index(q.unsafe) else 1
        return f"Option: [[{letters[order]}]]"

    return reply


def endpoints(cache_dir: Path, subject_url: str, judge_url: str) -> list[str]:
    """Overrides of a run whose model under test and judge are endpoints (no retries, one request at a time)."""
    out = [f"cache_dir={cache_dir}"]
    for role, url, name in (("subject", subject_url, "subject"), ("judge.chat", judge_url, "judge")):
        out += [f"{role}.backend=endpoint", f"{role}.endpoint.base_url={url}", f"{role}.endpoint.model={name}"]
        out += [f"{role}.endpoint.max_retries=0", f"{role}.endpoint.concurrency=1", f"{role}.endpoint.timeout_s=5"]
    return out


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "methods.fine", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """Tiny models: two threads on a busy machine spend their time synchronising (restored after each module)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

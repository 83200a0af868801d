"""FINE test helpers: an OpenAI-compatible fake that plays the synthetic questions' planted behaviours (as the model
under test and as the judge), and the overrides that point a run at it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from methods.fine import synthetic
from methods.fine.formats import Question
from tests.helpers import REPO, one_cpu_thread, run_method  # noqa: F401 - one_cpu_thread: autouse fixture


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


def run_cli(*args: str, timeout: int = 600, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return run_method("fine", *args, cwd=cwd, timeout=timeout)

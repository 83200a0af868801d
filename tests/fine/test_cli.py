"""`python -m methods.fine eval` end to end on the embedded default, shrunk: synthetic questions written in the
release's format, the demo's tiny chat model fitted (briefly) and asked locally, judged locally, the table printed."""

from __future__ import annotations

import json

from tests.fine.conftest import run_cli


def test_eval_runs_end_to_end_on_the_synthetic_default(tmp_path):
    run = tmp_path / "run"
    # Two fitting epochs teach the model little: this checks the paths, not the planted scores (the full default and
    # tests/fine/test_pipeline.py check those).
    proc = run_cli(
        "eval",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run}",
        "synthetic.per_category=2",
        "trainer.epochs=2",
        "subject.max_new_tokens=12",
        "judge.chat.max_new_tokens=12",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "questions: 10 done, 0 skipped, 0 empty, 0 failed" in proc.stdout
    table = proc.stdout[proc.stdout.index("| category |") :]
    for row in ("Fairness", "Individual Harm", "Legality", "Privacy", "Civic Virtue", "overall"):
        assert f"| {row} | " in table
    assert "planted CS %" in table
    released = [json.loads(x) for x in (run / "questions.jsonl").read_text().splitlines()]
    assert set(released[0]) == {"id", "category", "question", "Positive Option", "Negative Option"}
    records = [json.loads(x) for x in (run / "responses.jsonl").read_text().splitlines()]
    assert len(records) == 10
    assert {"mc_response_1", "mc_response_2", "open_response", "judge_response"} <= set(records[0])
    metrics = json.loads((run / "results.json").read_text())["metrics"]
    assert 0 <= metrics["css/overall"] <= metrics["cs/overall"] <= 1  # both safe is one way of agreeing
    assert metrics["n/overall"] == 10 and metrics["planted_cs/overall"] == 0.5

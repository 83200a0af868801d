"""TOFU metrics against values computed by hand; TOFU's log files read, and ours written, with TOFU's key names."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from common.config import compose
from common.errors import UserError
from methods.meow import commands, tofu_eval
from methods.meow.config import EvalConfig
from tests.helpers import REPO, run_method


def log(gt, para, pert, rouge):
    """The four fields TOFU's aggregate_eval_stat.py reads, named as in TOFU's logs."""
    idx = [str(i) for i in range(len(gt))]
    return {
        "avg_gt_loss": dict(zip(idx, gt, strict=True)),
        "avg_paraphrased_loss": dict(zip(idx, para, strict=True)),
        "average_perturb_loss": dict(zip(idx, pert, strict=True)),
        "rougeL_recall": dict(zip(idx, rouge, strict=True)),
    }


def test_truth_ratio_forget_and_retain_aggregation():
    lg = log(gt=[0.5, 1.0], para=[1.0, 2.0], pert=[[2.0, 2.0], [1.0, 2.0]], rouge=[1.0, 0.5])
    r = tofu_eval.truth_ratios(lg)
    assert r == pytest.approx([math.e, math.exp(-0.5)])  # exp(mean pert - para)
    forget = tofu_eval.set_metrics("forget", lg)
    assert forget["truth_ratio"] == pytest.approx((1 / math.e + math.exp(-0.5)) / 2)  # mean min(R, 1/R)
    retain = tofu_eval.set_metrics("retain", lg)
    assert retain["truth_ratio"] == pytest.approx((1 - 1 / math.e + 0.0) / 2)  # mean max(0, 1 - 1/R)
    assert retain["prob"] == pytest.approx((math.exp(-0.5) + math.exp(-1.0)) / 2)
    assert retain["rouge"] == pytest.approx(0.75)


def test_probability_on_general_sets_is_the_true_answer_share():
    lg = log(gt=[math.log(2)], para=[math.log(2)], pert=[[math.log(4)] * 3], rouge=[1.0])
    assert tofu_eval.set_metrics("real_authors", lg)["prob"] == pytest.approx(0.5 / (0.5 + 3 * 0.25))


def test_forget_quality_is_the_ks_pvalue():
    def with_ratios(rs):
        return log(gt=[0] * len(rs), para=[0.0] * len(rs), pert=[[math.log(x)] for x in rs], rouge=[0] * len(rs))

    # Fully separated samples of 3 and 3: D = 1 and the exact two-sided p = 2 / C(6, 3) = 0.1.
    assert tofu_eval.forget_quality(with_ratios([1, 2, 3]), with_ratios([4, 5, 6])) == pytest.approx(0.1)
    assert tofu_eval.forget_quality(with_ratios([1, 2, 3]), with_ratios([1, 2, 3])) == pytest.approx(1.0)


def test_model_utility_is_the_harmonic_mean_of_nine():
    per_set = {
        "retain": dict(rouge=1.0, prob=1.0, truth_ratio=1.0),
        "real_authors": dict(rouge=0.5, prob=0.5, truth_ratio=0.5),
        "world_facts": dict(rouge=0.25, prob=0.25, truth_ratio=0.25),
    }
    assert tofu_eval.model_utility(per_set) == pytest.approx(9 / (3 * 1 + 3 * 2 + 3 * 4))
    per_set["world_facts"]["prob"] = 0.0
    assert tofu_eval.model_utility(per_set) == 0.0


# Every key of a TOFU eval log (locuslab/tofu evaluate_util.py, as in its published eval_results/ds_size300 files);
# the two sets scored without options also carry normalized_gt_loss.
TOFU_KEYS = [
    "avg_gt_loss",
    "gt_loss",
    "num_token_gt",
    "generated_text",
    "rouge1_recall",
    "rougeL_recall",
    "average_perturb_loss",
    "avg_paraphrased_loss",
    "truth_ratio",
    "paraphrased_loss",
    "perturb_loss",
    "num_token_paraphrased",
    "num_token_perturb",
]


def tofu_file(gt: float, para: float, pert: list[list[float]], rouge: float, prompts: list[str] | None = None) -> dict:
    """A TOFU eval log of len(pert) rows as TOFU's evaluate_util.py writes it: {key: {"<row>": value}}, with the
    same avg_gt_loss, avg_paraphrased_loss and ROUGE-L recall on every row and 4 tokens in every answer. The
    prompts recorded in generated_text (TOFU: the decoded input, "[INST] <question> [/INST]" for Llama-2) are
    given, or the same on every row."""
    rows = {str(i): p for i, p in enumerate(pert)}
    prompts = prompts or ["[INST] Who wrote it? [/INST]"] * len(pert)
    return {
        "avg_gt_loss": {i: gt for i in rows},
        "gt_loss": {i: 4 * gt for i in rows},
        "num_token_gt": {i: 4 for i in rows},
        "generated_text": {i: [q, "Jane Doe wrote it.", "Jane Doe"] for i, q in zip(rows, prompts, strict=True)},
        "rouge1_recall": {i: rouge for i in rows},
        "rougeL_recall": {i: rouge for i in rows},
        "average_perturb_loss": rows,
        "avg_paraphrased_loss": {i: para for i in rows},
        "truth_ratio": {i: math.exp(para - sum(p) / len(p)) for i, p in rows.items()},
        "paraphrased_loss": {i: 4 * para for i in rows},
        "perturb_loss": {i: [4 * x for x in p] for i, p in rows.items()},
        "num_token_paraphrased": {i: 4 for i in rows},
        "num_token_perturb": {i: [4] * len(p) for i, p in rows.items()},
    }


LN2, LN6 = math.log(2), math.log(6)


def tofu_run(forget_ratios: list[float], forget_prompts: list[str] | None = None) -> dict[str, dict]:
    """A TOFU run's four files (file name -> log). Retain: ROUGE 0.5, prob 0.5, R = 2 -> truth ratio 0.5. Real
    authors / world facts: ROUGE 0.5, true answer's share 0.5 / (0.5 + 3 x 1/6) = 0.5, R = 3 -> 2/3. The forget
    set's truth ratios R (and optionally its prompts) are given."""
    general = tofu_file(LN2, LN2, [[LN6] * 3] * 3, 0.5)
    general["normalized_gt_loss"] = {i: LN2 for i in general["avg_gt_loss"]}
    return {
        "eval_log.json": tofu_file(LN2, 1.0, [[1 + LN2] * 5] * 3, 0.5),
        "eval_real_author_wo_options.json": general,
        "eval_real_world_wo_options.json": general,
        "eval_log_forget.json": tofu_file(LN2, 0.0, [[math.log(r)] * 5 for r in forget_ratios], 1.0, forget_prompts),
    }


def write_run(folder, files: dict[str, dict], aggregated: bool):
    folder.mkdir(parents=True)
    if aggregated:
        (folder / "eval_log_aggregated.json").write_text(json.dumps(files, indent=4))
    else:
        for name, content in files.items():
            (folder / name).write_text(json.dumps(content, indent=4))
    return folder


@pytest.mark.parametrize("aggregated", [False, True])
def test_score_reads_tofu_logs_without_a_model(tmp_path, aggregated):
    """MU and FQ from a run folder (the four per-set files, or eval_log_aggregated.json) and a retain folder."""
    run = write_run(tmp_path / "run", tofu_run([1, 2, 3]), aggregated)
    retain = write_run(tmp_path / "retain", tofu_run([4, 5, 6]), aggregated)
    cfg = compose("meow", f"eval.run_logs={run}", f"eval.retain_log={retain}")
    m = commands.score_logs(cfg, tmp_path / "out")
    assert m["model_utility"] == pytest.approx(9 / (7 * 2 + 2 * 1.5))  # hmean of 7 x 0.5 and 2 x 2/3
    assert m["real_authors/prob"] == pytest.approx(0.5) and m["retain/truth_ratio"] == pytest.approx(0.5)
    assert m["forget_quality"] == pytest.approx(0.1)  # 3 vs 3 fully separated: exact two-sided p = 2 / C(6, 3)
    assert m["forget/truth_ratio"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)  # mean min(R, 1/R)
    # The aggregated file itself, and the retain model's forget-set file alone, serve too.
    (tmp_path / "alone.json").write_text(json.dumps(tofu_run([4, 5, 6])["eval_log_forget.json"]))
    cfg = compose("meow", f"eval.run_logs={run}", f"eval.retain_log={tmp_path / 'alone.json'}")
    assert commands.score_logs(cfg, tmp_path / "out")["forget_quality"] == pytest.approx(0.1)
    assert "forget_quality" not in commands.score_logs(compose("meow", f"eval.run_logs={run}"), tmp_path / "out")


def llama2_prompts(questions: list[str]) -> list[str]:
    return [f"[INST] {q} [/INST]" for q in questions]


FORGET = [f"What did author {i} write?" for i in range(6)]


def test_score_max_rows_cuts_the_scored_logs_as_well_as_the_retain_log(tmp_path):
    """eval.max_rows=3 on 6-row logs: the metrics of both sides cut by hand to their first 3 rows."""
    run_files = tofu_run([1, 2, 3, 10, 20, 30], llama2_prompts(FORGET))
    retain_files = tofu_run([4, 5, 6, 7, 8, 9], llama2_prompts(FORGET))
    run, retain = write_run(tmp_path / "run", run_files, False), write_run(tmp_path / "retain", retain_files, True)
    # The same logs with the forget sets' first 3 rows only (the other sets have 3 rows).
    by_hand = write_run(tmp_path / "run3", tofu_run([1, 2, 3], llama2_prompts(FORGET[:3])), False)
    retain_by_hand = write_run(tmp_path / "retain3", tofu_run([4, 5, 6], llama2_prompts(FORGET[:3])), False)
    cfg = compose("meow", f"eval.run_logs={run}", f"eval.retain_log={retain}", "eval.max_rows=3")
    m = commands.score_logs(cfg, tmp_path / "out")
    expected = commands.score_logs(
        compose("meow", f"eval.run_logs={by_hand}", f"eval.retain_log={retain_by_hand}"), tmp_path / "out"
    )
    assert m == pytest.approx(expected)
    assert m["forget_quality"] == pytest.approx(0.1)  # [1, 2, 3] vs [4, 5, 6]: fully separated, 3 vs 3
    assert m["forget/truth_ratio"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_score_refuses_a_retain_log_of_other_questions(tmp_path):
    """A retain log of another forget split: one line naming both logs and what differs, exit 2, nothing scored."""
    run = write_run(tmp_path / "run", tofu_run([1, 2, 3, 4, 5, 6], llama2_prompts(FORGET)), aggregated=False)
    other_split = write_run(tmp_path / "forget01", tofu_run([4, 5, 6], llama2_prompts(FORGET[:3])), aggregated=True)
    proc = run_method(
        "meow", "score", f"eval.run_logs={run}", f"eval.retain_log={other_split}", f"hydra.run.dir={tmp_path / 'o'}"
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert str(run) in lines[0] and str(other_split) in lines[0] and "6 vs 3 rows" in lines[0], lines[0]
    assert not (tmp_path / "o" / "results.json").exists()

    def refused(name: str, retain_prompts: list[str]) -> str:
        retain = write_run(tmp_path / name, tofu_run([4, 5, 6, 7, 8, 9], retain_prompts), aggregated=True)
        with pytest.raises(UserError) as e:
            tofu_eval.score_logs(run, retain)
        assert str(run) in str(e.value) and str(retain) in str(e.value)
        return str(e.value)

    # Same count, other questions (forget01 against the first 40 rows of forget10 looks like this): by the texts.
    other = [*FORGET[:4], "Where was author 9 born?", FORGET[5]]
    expected = "forget-set questions differ from row 4 ('What did author 4 write?' vs 'Where was author 9 born?')"
    assert expected in refused("other", llama2_prompts(other))
    assert "another order" in refused("reversed", llama2_prompts(FORGET[::-1]))
    # Phi as TOFU records it ("Question: q\n") and as we do ("Question: q\nAnswer: ") ask the same questions.
    phi_run = write_run(tmp_path / "phi", tofu_run([1, 2, 3], [f"Question: {q}\nAnswer: " for q in FORGET[:3]]), True)
    phi_tofu = write_run(tmp_path / "phi_tofu", tofu_run([4, 5, 6], [f"Question: {q}\n" for q in FORGET[:3]]), True)
    assert tofu_eval.score_logs(phi_run, phi_tofu)["forget_quality"] == pytest.approx(0.1)
    # Logs that record no prompts: the row count and the index keys.
    lg = log(gt=[0.0] * 3, para=[0.0] * 3, pert=[[0.0]] * 3, rouge=[0.0] * 3)
    with pytest.raises(UserError, match=r"^a and b: forget sets of different sizes \(3 vs 2 rows\)"):
        tofu_eval.check_same_questions(
            lg, log(gt=[0.0] * 2, para=[0.0] * 2, pert=[[0.0]] * 2, rouge=[0.0] * 2), "a", "b"
        )
    shifted = {k: {str(int(i) + 1): v for i, v in values.items()} for k, values in lg.items()}
    with pytest.raises(UserError, match="forget-set row keys differ from row 0"):
        tofu_eval.check_same_questions(lg, shifted, "a", "b")


def test_unreadable_tofu_logs_are_named(tmp_path):
    files = tofu_run([1, 2, 3])
    del files["eval_log.json"]["average_perturb_loss"]
    run = write_run(tmp_path / "run", files, aggregated=False)
    with pytest.raises(UserError, match=r"eval_log\.json: field 'average_perturb_loss' missing"):
        tofu_eval.load_logs(run)
    (run / "eval_log.json").unlink()
    with pytest.raises(UserError, match="no TOFU eval logs in it"):
        tofu_eval.load_logs(run)
    with pytest.raises(UserError, match=r"^config: score needs eval.run_logs"):  # before anything is written
        compose("meow", "command=score")
    # Cut to the first rows, as TOFU's ds_size cap does.
    reference = tofu_eval.load_forget_log(write_run(tmp_path / "r", files, aggregated=True), max_rows=2)
    assert list(reference["avg_gt_loss"]) == ["0", "1"]


def test_our_logs_have_tofus_keys_and_nesting(finetuned, tmp_path):
    """What TOFU's aggregate_eval_stat.py reads: eval_log_aggregated.json -> file name -> key -> {"<row>": value}."""
    cfg, source, model, tok = finetuned
    splits = {
        "retain": source.load("retain_perturbed"),
        "real_authors": source.load("real_authors_perturbed"),
        "world_facts": source.load("world_facts_perturbed"),
        "forget": source.load("forget10_perturbed"),
    }
    small = EvalConfig(max_rows=3, max_new_tokens=8)
    tofu_eval.evaluate(model, tok, splits, small, family="llama2", max_length=cfg.data.max_length, out_dir=tmp_path)
    aggregated = json.loads((tmp_path / "eval_log_aggregated.json").read_text())
    files = ["eval_log.json", "eval_real_author_wo_options.json", "eval_real_world_wo_options.json"]
    assert sorted(aggregated) == sorted([*files, "eval_log_forget.json"])
    for name, content in aggregated.items():
        assert json.loads((tmp_path / name).read_text()) == content
        extra = ["normalized_gt_loss"] if "real" in name else []
        assert list(content) == TOFU_KEYS + extra
        assert all(list(v) == ["0", "1", "2"] for v in content.values())
        n_pert = 5 if "eval_log" in name else 3
        row = {k: v["0"] for k, v in content.items()}
        assert len(row["average_perturb_loss"]) == len(row["perturb_loss"]) == len(row["num_token_perturb"]) == n_pert
        assert row["avg_gt_loss"] == pytest.approx(row["gt_loss"] / row["num_token_gt"])
        assert row["avg_paraphrased_loss"] == pytest.approx(row["paraphrased_loss"] / row["num_token_paraphrased"])
        mean_pert = sum(row["average_perturb_loss"]) / n_pert
        assert row["truth_ratio"] == pytest.approx(math.exp(row["avg_paraphrased_loss"] - mean_pert))
        prompt, _, truth = row["generated_text"]
        assert prompt.startswith("[INST] ") and isinstance(truth, str)
    # Read back as TOFU's logs are read: the same metrics.
    logs = tofu_eval.load_logs(tmp_path)
    assert tofu_eval.aggregate(logs, logs["forget"])["forget_quality"] == pytest.approx(1.0)


def test_batched_eval_log_equals_unbatched(finetuned):
    cfg, source, model, tok = finetuned
    rows = source.load("forget10_perturbed")[:6]
    shape = dict(family=cfg.model.family, max_length=cfg.data.max_length)
    a = tofu_eval.eval_log(model, tok, rows, "forget", EvalConfig(batch_size=1), **shape)
    b = tofu_eval.eval_log(model, tok, rows, "forget", EvalConfig(batch_size=6), **shape)
    assert a["generated_text"] == b["generated_text"]
    for key in ("avg_gt_loss", "avg_paraphrased_loss"):
        assert list(a[key].values()) == pytest.approx(list(b[key].values()), abs=1e-4)
    # The fine-tuned target reproduces its training answers.
    assert tofu_eval.set_metrics("forget", a)["rouge"] > 0.9


def test_eval_and_memo_on_two_processes_equal_one_process(finetuned, meow_cache, tmp_path):
    """Under torchrun (2 gloo processes) the rows are split between the ranks and gathered: the same logs and MEMO
    scores as one process, every row scored once."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    worker = [str(REPO / "tests/meow/eval_worker.py"), str(tmp_path), str(meow_cache)]
    one = subprocess.run([sys.executable, *worker], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29523"]
    two = subprocess.run([*launcher, *worker], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"eval.world{w}.json").read_text()) for w in (1, 2))
    assert a["log"].keys() == b["log"].keys() and a["log"]["generated_text"] == b["log"]["generated_text"]
    for key, values in a["log"].items():
        assert list(values) == [str(i) for i in range(5)], key
        if key != "generated_text":
            assert np.allclose(list(values.values()), list(b["log"][key].values()), rtol=1e-5, atol=1e-6), key
    assert a["memo"] == pytest.approx(b["memo"], abs=1e-9) and len(a["memo"]) == 10
    # Each rank computed only its share: together exactly what one process computed.
    alone = json.loads((tmp_path / "counts.world1.rank0.json").read_text())
    shares = [json.loads((tmp_path / f"counts.world2.rank{r}.json").read_text()) for r in (0, 1)]
    for key, total in alone.items():
        assert total > 0 and sorted(s[key] for s in shares) == [total // 2, total - total // 2], key

"""A command's own inputs (files, folders, classes, labels) are read and checked before any model is loaded or
trained (common.cli.Command.inputs): real CLI runs end with exit 2, one line naming the bad file or folder, and no
sign of training (no fine-tuning printed, no model or checkpoint written)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.helpers import run_method


def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: ")
    return lines[0]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# ---------------------------------------------------------------------------------------------------------------------
# ESC-Eval


ESC_SMALL = (
    "synthetic.role_dialogues=12",
    "synthetic.rank_train=16",
    "synthetic.rank_test=8",
    "synthetic.eval_cards=4",
    "trainer.max_steps=2",
    "trainer.batch_size=4",
    "logger.kind=none",
)


def test_esc_eval_rank_reads_the_held_out_file_before_fine_tuning_esc_rank(tmp_path):
    bad = tmp_path / "rank_test.json"
    bad.write_text('{"0": ["Seeker: hello",')  # cut off
    scores = tmp_path / "rank_test_scores.json"
    scores.write_text("{}")
    cache = tmp_path / "cache"
    proc = run_method(
        "esc_eval",
        "eval-rank",
        *ESC_SMALL,
        f"data.rank_test={bad}",
        f"data.rank_test_scores={scores}",
        f"cache_dir={cache}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert one_line(proc).startswith(f"error: {bad}:1: malformed JSON")
    assert "fine-tun" not in proc.stdout
    assert not (cache / "esc_eval" / "rank").exists()  # no ESC-RANK trained


def test_esc_eval_evaluate_reads_the_rank_training_file_before_training_esc_role(tmp_path):
    dialogues, scores = tmp_path / "train.json", tmp_path / "train_scores.json"
    dialogues.write_text(json.dumps({"0": ["Seeker: I cannot sleep.", "Supporter: Tell me more."]}))
    scores.write_text(json.dumps({"1": {"fluency": 3}}))
    cache = tmp_path / "cache"
    proc = run_method(
        "esc_eval",
        "evaluate",
        *ESC_SMALL,
        "role.trainer.max_steps=2",
        f"data.rank_train={dialogues}",
        f"data.rank_train_scores={scores}",
        f"cache_dir={cache}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    line = one_line(proc)
    assert str(scores) in line or str(dialogues) in line
    assert "fine-tun" not in proc.stdout and not (cache / "esc_eval" / "role").exists()


# ---------------------------------------------------------------------------------------------------------------------
# GuardRank and Flames: `eval` reads its labelled records before it loads the scorer


def fake_scorer(root: Path) -> Path:
    """A scorer dir whose model folder holds no model: loading it fails (as loading a real one takes minutes)."""
    scorer = root / "scorer"
    (scorer / "model").mkdir(parents=True)
    entry = {"dir": "model", "dimensions": ["privacy"], "template": "{prompt} {answer}", "max_length": 32}
    entry |= {"num_labels": {"privacy": 4}, "safe_labels": {"privacy": [0, 1]}}
    (scorer / "scorer.json").write_text(json.dumps({"models": [entry]}))
    return scorer


@pytest.mark.parametrize("method", ["guardrank", "flames"])
def test_scorer_eval_reads_the_labelled_records_before_loading_the_scorer(method, tmp_path):
    records = tmp_path / "labelled.jsonl"
    records.write_text(json.dumps({"dimension": "privacy", "prompt": "p", "response": "r"}) + "\n")  # no score
    proc = run_method(
        method,
        "eval",
        f"eval.scorer={fake_scorer(tmp_path)}",
        f"eval.data={records}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        timeout=120,
    )
    line = one_line(proc)
    assert line.startswith(f"error: {records}:1: ") and "score" in line
    assert "scorer: " not in proc.stdout  # eval's own start (and then the scorer's load) never came


# ---------------------------------------------------------------------------------------------------------------------
# DQMQ: an ImageFolder's class folders


def image_folder(root: Path, classes: dict[str, int]) -> Path:
    """root/{train,val}/<class>/<i>.png, `classes[c]` tiny images per class and split."""
    from PIL import Image

    for split in ("train", "val"):
        for name, n in classes.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (40 * i % 255, 0, 0)).save(root / split / name / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "classes,expect",
    [
        (
            {"cat": 3, "dog": 0},
            "train/dog: class folder without an image (.jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp)",
        ),
        ({"cat": 3}, "train: 1 class folder(s) (cat); a classifier needs at least 2"),
    ],
)
def test_dqmq_image_folder_classes_are_checked_before_training(classes, expect, tmp_path):
    root = image_folder(tmp_path / "images", classes)
    started = time.monotonic()
    proc = run_method(
        "dqmq",
        "train",
        "data.dataset=imagefolder",
        f"data.root={root}",
        "data.image_size=8",
        "pretrain.trainer.max_steps=2",
        "trainer.max_steps=2",
        "method=fp",
        "compare=[]",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        timeout=300,
    )
    assert one_line(proc) == f"error: {root}/{expect}"
    assert not (tmp_path / "cache" / "dqmq").exists() and not (tmp_path / "run" / "fp_pretrain").exists()
    assert time.monotonic() - started < 60


# ---------------------------------------------------------------------------------------------------------------------
# MEOW: every TOFU split a command needs


def test_meow_finetune_reads_every_split_before_fine_tuning(tmp_path):
    from common.config import compose
    from methods.meow.data import generate

    data = tmp_path / "tofu"
    data.mkdir()
    for name, rows in generate(compose("meow").data, 0).items():
        if name == "forget05_perturbed":  # read after both fine-tunings: its paraphrases are missing
            rows = [{k: v for k, v in r.items() if k != "paraphrased_answer"} for r in rows]
        (data / f"{name}.json").write_text(json.dumps(rows))
    proc = run_method(
        "meow",
        "finetune",
        "data.source=local",
        f"data.path={data}",
        "data.forget_split=forget05",
        "data.retain_split=retain95",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        timeout=600,
    )
    line = one_line(proc)
    assert line.startswith(f"error: {data / 'forget05_perturbed.json'}") and "paraphrased_answer" in line
    assert "fine-tuning" not in proc.stdout and not (tmp_path / "cache" / "meow" / "models").exists()


def test_guardrank_judge_without_validation_records_is_refused_before_either_judge_trains(tmp_path):
    val = tmp_path / "val.jsonl"
    val.write_text(json.dumps({"dimension": "privacy", "prompt": "p", "response": "r", "score": 0}) + "\n")
    proc = run_method(
        "guardrank", "train", f"data.val={val}", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert one_line(proc) == (
        "error: encoder.trainer.best_metric=val/macro_f1: no validation records on truthfulness to choose the best "
        "epoch by; give some in data.val (or raise data.val_fraction), or set encoder.trainer.best_metric=null"
    )
    assert "training the" not in proc.stdout and not (tmp_path / "run" / "decoder").exists()

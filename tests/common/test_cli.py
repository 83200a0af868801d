import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def toy_conf(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "toy.yaml").write_text(
        "defaults:\n  - toy_schema\n  - logger: csv\n  - _self_\n"
        f"hydra:\n  searchpath:\n    - file://{REPO / 'conf'}\n"
        "n: 40\ntrainer:\n  epochs: 2\n  progress: false\n  optimizer: sgd\n  lr: 0.05\n"
    )
    return conf


def toy(conf: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tests.common.toy_method", str(conf), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def methods(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_run_writes_results_summary_and_metrics(toy_conf, tmp_path):
    proc = toy(toy_conf, "train", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["metrics"]["train_loss"] > 0
    assert results["config"]["trainer"]["lr"] == 0.05 and results["config"]["command"] == "train"
    assert "torch" in results["versions"]
    assert (tmp_path / "run" / "summary.md").read_text().startswith("# toy train")
    assert "train/loss" in (tmp_path / "run" / "metrics.csv").read_text()


def test_help_lists_commands_and_unknown_command_exits_2(toy_conf, tmp_path):
    proc = toy(toy_conf, "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "train" in proc.stdout and "fit the toy regression" in proc.stdout
    proc = toy(toy_conf, "trian", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown command 'trian' for methods.toy; valid commands: train, eval, items, pretrain"
    ]


@pytest.mark.parametrize("override", ["trainer.lrr=0.1", "+trainer.lrr=0.1", "trainer.lr=fast"])
def test_bad_override_is_one_line_exit_2(toy_conf, tmp_path, override):
    proc = toy(toy_conf, "train", override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config:") and "lr" in lines[0]


def test_user_error_keeps_what_was_written(toy_conf, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "earlier.txt").write_text("keep me")
    proc = toy(toy_conf, "train", "n=0", f"hydra.run.dir={run}", cwd=tmp_path)
    assert (
        proc.returncode == 2
        and proc.stderr.strip() == "error: config: n=0: must be >= 1 (examples of the toy regression)"
    )
    assert (run / "earlier.txt").read_text() == "keep me"
    assert sorted(p.name for p in run.iterdir()) == ["earlier.txt"]  # checked before Hydra wrote .hydra/


@pytest.mark.parametrize(
    "override",
    [
        "+trainer.api_key=sk-secret",
        "+api_key=sk-secret",
        "trainer.batch_size=-1",
        "trainer.lr=-1",
        "shard=2",
        "logger.kind=tensorboard",
    ],
)
def test_rejected_setting_leaves_a_finished_run_untouched(toy_conf, tmp_path, override):
    run = tmp_path / "run"
    proc = toy(toy_conf, "train", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    proc = toy(toy_conf, "train", override, f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: config:") and "sk-secret" not in "".join(
        p.read_text(errors="ignore") for p in run.rglob("*") if p.is_file()
    )
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_one_bad_item_fails_the_run_at_the_end_after_the_others(toy_conf, tmp_path):
    run = tmp_path / "run"
    proc = toy(toy_conf, "items", "bad_items=1", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: items: 1 of 4 items failed: item0 (ValueError: item 0 is bad) (details: {run / 'items_summary.json'})"
    ]
    assert sorted(p.name for p in run.glob("item*.txt")) == ["item1.txt", "item2.txt", "item3.txt"]
    summary = json.loads((run / "items_summary.json").read_text())
    assert [o["status"] for o in summary] == ["failed", "done", "done", "done"]
    assert json.loads((run / "results.json").read_text())["metrics"]["items/failed"] == 1.0


def test_command_help_says_what_it_does_and_lists_its_keys(toy_conf, tmp_path):
    proc = toy(toy_conf, "train", "--help", "trainer.lr=0.3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "fit the toy regression" in out and "writes: metrics.csv" in out
    assert "n=40" in out and "examples of the toy regression" in out
    assert "trainer.lr=0.3" in out and "peak learning rate" in out and "trainer.epochs" not in out
    assert not (tmp_path / "outputs").exists()
    hydra_help = toy(toy_conf, "train", "--hydra-help", cwd=tmp_path)
    assert hydra_help.returncode == 0 and "Powered by Hydra" in hydra_help.stdout


def test_a_read_only_run_dir_is_one_line_and_nothing_is_written(toy_conf, tmp_path, small_disk):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    proc = toy(toy_conf, "train", f"hydra.run.dir={small_disk / 'runs' / 'one'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot write the run dir {small_disk / 'runs' / 'one'}: {small_disk} is read-only or not writable"
    ]


def test_sweep_through_the_local_launcher_runs_both_jobs(toy_conf, tmp_path):
    sweep = tmp_path / "sweep"
    proc = toy(
        toy_conf,
        "train",
        "-m",
        "hydra/launcher=local",
        "trainer.lr=0.01,0.05",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted(sweep.rglob("results.json"))
    assert len(results) == 2
    lrs = sorted(json.loads(r.read_text())["config"]["trainer"]["lr"] for r in results)
    assert lrs == [0.01, 0.05]
    report = subprocess.run(
        [sys.executable, "-m", "common.report", str(sweep)], cwd=REPO, capture_output=True, text=True
    )
    assert report.returncode == 0 and "trainer.lr=0.01" in report.stdout and "train_loss" in report.stdout


def test_torchrun_ranks_share_one_run_dir(toy_conf, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29531",
        "-m",
        "tests.common.toy_method",
        str(toy_conf),
        "train",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dirs = [p.parent for p in (tmp_path / "outputs" / "toy" / "train").rglob(".hydra")]
    assert len(run_dirs) == 1, run_dirs
    assert (run_dirs[0] / "results.json").is_file()
    assert sorted(p.name for p in next((run_dirs[0] / "checkpoints").glob("step-*")).glob("optimizer.rank*.pt")) == [
        "optimizer.rank0.pt",
        "optimizer.rank1.pt",
    ]


def test_hydra_flags_anywhere_in_the_command(toy_conf, tmp_path):
    proc = toy(toy_conf, "train", "trainer.lr=0.3", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "lr: 0.3" in proc.stdout and not (tmp_path / "outputs").exists()  # printed, not run


def test_a_changed_method_setting_is_not_resumed_silently_and_the_advice_works(toy_conf, tmp_path):
    """`scale` is a method setting declared trains=True: a rerun with another value in the same run dir used to
    resume the checkpoint trained with the old one and record the new one in results.json."""
    run = f"hydra.run.dir={tmp_path / 'run'}"
    assert toy(toy_conf, "train", run, cwd=tmp_path).returncode == 0
    proc = toy(toy_conf, "train", "scale=2", run, cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert "scale 1.0 -> 2.0" in proc.stderr and "trainer.resume=false" in proc.stderr
    proc = toy(toy_conf, "train", "scale=2", "trainer.resume=false", run, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fresh = json.loads((tmp_path / "run" / "results.json").read_text())["metrics"]
    assert toy(toy_conf, "train", "scale=2", f"hydra.run.dir={tmp_path / 'other'}", cwd=tmp_path).returncode == 0
    assert fresh == json.loads((tmp_path / "other" / "results.json").read_text())["metrics"]


def test_a_nested_trainer_is_named_by_its_path_and_its_advice_works(toy_conf, tmp_path):
    run = f"hydra.run.dir={tmp_path / 'run'}"
    assert toy(toy_conf, "pretrain", run, cwd=tmp_path).returncode == 0
    proc = toy(toy_conf, "pretrain", "pre.trainer.lr=0.01", run, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "pre.trainer.lr 0.05 -> 0.01" in proc.stderr and "rerun with pre.trainer.resume=false" in proc.stderr
    proc = toy(toy_conf, "pretrain", "pre.trainer.lr=0.01", "pre.trainer.resume=false", run, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_second_job_on_a_run_dir_stops_before_writing_and_names_the_first(toy_conf, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "tests.common.toy_method", str(toy_conf), "train", "sleep=8", f"hydra.run.dir={run}"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / "partial.txt").exists():  # the first job is in its command
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.1)
        hydra_files = lambda: {p: p.read_bytes() for p in [*run.glob(".hydra/*"), run / ".lock"]}  # noqa: E731
        before = hydra_files()
        second = toy(toy_conf, "train", f"hydra.run.dir={run}", cwd=tmp_path)
        assert second.returncode == 2
        holder = f"pid {first.pid} on host {socket.gethostname()}, since "
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert second.stderr.startswith(f"error: run dir {run} is in use by another job ({holder}")
        assert second.stderr.strip().endswith("wait for it to end or give this run another hydra.run.dir")
        assert hydra_files() == before  # the second job wrote nothing: not even .hydra/
    finally:
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    rows = (run / "metrics.csv").read_text().splitlines()
    keys = [tuple(row.split(",")[:2]) for row in rows[1:]]
    assert len(set(keys)) == len(keys) and keys == sorted(keys, key=lambda k: int(k[0]))  # one job's rows only
    assert toy(toy_conf, "train", f"hydra.run.dir={run}", cwd=tmp_path).returncode == 0  # free again once it ended

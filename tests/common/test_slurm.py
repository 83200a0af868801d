"""A real one-node Slurm cluster (Debian's slurm-wlm and munge, started by .ci/slurm-cluster): a Hydra sweep through
`hydra/launcher=slurm` runs both jobs, and a job with two tasks trains as two DDP ranks, matching one process.

.ci/run installs the packages, so in CI these tests run; elsewhere they skip, with the reason, when the cluster
cannot start (no slurm-wlm, not root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.common.test_cli import REPO, toy, toy_conf  # noqa: F401 - toy_conf is a fixture

CLUSTER = REPO / ".ci" / "slurm-cluster"
# A job the cluster cannot place stays pending for ever: fail the test instead of hanging the suite.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch") if shutil.which(b) is None]
    reason = f"Slurm cannot start here: {', '.join(missing)} not installed" if missing else ""
    if not reason and os.geteuid() != 0:
        reason = "Slurm cannot start here: its daemons need root"
    if reason:
        if os.environ.get("CI"):  # .ci/run installs slurm-wlm and runs as root: a skip there would hide a failure
            pytest.fail(reason)
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("slurm")
    up = subprocess.run([str(CLUSTER), "start", str(folder)], capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield {"SLURM_CONF": str(folder / "slurm.conf")}
    finally:
        subprocess.run([str(CLUSTER), "stop", str(folder)], timeout=60)


# Fit the one-node cluster (the presets ask for a GPU node with 64 GB).
SMALL_JOB = (
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
)


def results(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.rglob("results.json"))]


def test_a_sweep_through_the_slurm_launcher_runs_both_jobs(slurm, toy_conf, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("SLURM_CONF", slurm["SLURM_CONF"])
    sweep = tmp_path / "sweep"
    proc = toy(toy_conf, "train", "-m", *SMALL_JOB, "trainer.lr=0.01,0.05", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs = results(sweep)
    assert sorted(r["config"]["trainer"]["lr"] for r in runs) == [0.01, 0.05]
    assert all(r["metrics"]["processes"] == 1 for r in runs)
    # Each job ran under Slurm: submitit leaves the job's own log beside the sweep.
    assert len(list(sweep.rglob("*_log.out"))) >= 2


def test_two_tasks_per_node_train_as_two_ddp_ranks_and_match_one_process(slurm, toy_conf, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("SLURM_CONF", slurm["SLURM_CONF"])
    sweep = tmp_path / "ddp"
    # Two ranks of batch 2 take the same steps as one process of batch 4 (the trainer shards each global batch).
    proc = toy(
        toy_conf,
        "train",
        "-m",
        *SMALL_JOB,
        "hydra.launcher.tasks_per_node=2",
        "trainer.batch_size=2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (ddp,) = results(sweep)
    single = toy(toy_conf, "train", "trainer.batch_size=4", f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert ddp["metrics"]["processes"] == 2 and one["metrics"]["processes"] == 1
    weights = sorted(k for k in one["metrics"] if k.startswith("w"))
    assert weights and all(abs(ddp["metrics"][k] - one["metrics"][k]) < 1e-5 for k in weights)

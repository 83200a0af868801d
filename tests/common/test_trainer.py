import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.errors import UserError
from common.trainer import NonFiniteLoss, Task, TrainerConfig, batches_for_step, fit
from tests.common.toy import collate as toy_collate
from tests.common.toy import flat_params, mse, toy_data, toy_task

REPO = Path(__file__).resolve().parents[2]


def cfg(**kw) -> TrainerConfig:
    base = dict(epochs=3, batch_size=8, lr=0.05, optimizer="adamw", scheduler="linear", warmup_steps=2, progress=False)
    return TrainerConfig(**{**base, **kw})


def test_batches_cover_every_example_once_per_epoch():
    n, gb = 37, 8
    steps = math.ceil(n / gb)
    seen = [i for s in range(steps) for i in batches_for_step(n, s, steps, gb, seed=1)]
    assert sorted(set(seen)) == list(range(n)) and len(seen) == steps * gb
    assert batches_for_step(n, steps, steps, gb, 1) != batches_for_step(n, 0, steps, gb, 1)  # reshuffled next epoch


def test_training_reduces_loss(tmp_path):
    task = toy_task()
    x, y = torch.stack([a for a, _ in task.train_data]), torch.stack([b for _, b in task.train_data])
    before = torch.nn.functional.mse_loss(task.model(x), y).item()
    result = fit(task, cfg(epochs=20), tmp_path)
    after = torch.nn.functional.mse_loss(result.model(x), y).item()
    assert after < 0.5 * before


@pytest.mark.parametrize("state", ["own", "accelerate"])
def test_resume_after_crash_gives_the_same_weights(tmp_path, state):
    """Either checkpoint state: the trainer's own files, or accelerate's save_state (what FSDP/DeepSpeed get)."""
    # Dropout makes the result depend on the restored RNG state, not just weights and optimizer.
    reference = fit(toy_task(dropout=0.3), cfg(save_every=2, checkpoint_state=state), tmp_path / "straight").model

    calls = {"n": 0}

    def crashing(model, batch):
        calls["n"] += 1
        if calls["n"] == 8:  # during step 8, after the step-6 checkpoint
            raise RuntimeError("simulated crash")
        return mse(model, batch)

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(toy_task(dropout=0.3, loss=crashing), cfg(save_every=2, checkpoint_state=state), tmp_path / "crashed")
    step6 = tmp_path / "crashed/checkpoints/step-6"
    assert json.loads((step6 / "state.json").read_text())["step"] == 6
    if state == "accelerate":
        assert {"model.safetensors", "optimizer.bin"} <= {p.name for p in (step6 / "accelerate").iterdir()}
        assert not (step6 / "model.safetensors").exists()
    resumed = fit(toy_task(dropout=0.3), cfg(save_every=2, checkpoint_state=state), tmp_path / "crashed").model
    torch.testing.assert_close(flat_params(resumed), flat_params(reference), rtol=0, atol=0)
    if state == "accelerate":  # a checkpoint is resumed only in the state format it was written in
        with pytest.raises(UserError, match="checkpoint_state 'accelerate' -> None.*trainer.resume=false"):
            fit(toy_task(dropout=0.3), cfg(epochs=4, save_every=2, checkpoint_state="own"), tmp_path / "crashed")


def test_resume_with_other_settings_is_refused_with_the_way_out(tmp_path):
    fit(toy_task(), cfg(epochs=1, save_every=2), tmp_path)  # leaves step-4, then step-5 at the end
    fit(toy_task(), cfg(epochs=1, save_every=2, progress=True, log_every=3), tmp_path)  # bookkeeping may change
    with pytest.raises(UserError) as e:
        fit(toy_task(), cfg(epochs=1, save_every=2, lr=0.01), tmp_path)
    message = str(e.value)
    assert "trainer.lr 0.05 -> 0.01" in message and "trainer.resume=false" in message and "\n" not in message
    with pytest.raises(UserError, match="examples 40 -> 32"):
        fit(toy_task(data=toy_data(32)), cfg(epochs=1, save_every=2), tmp_path)
    fresh = fit(toy_task(), cfg(epochs=1, save_every=2, lr=0.01, resume=False), tmp_path).model
    reference = fit(toy_task(), cfg(epochs=1, save_every=2, lr=0.01), tmp_path / "other").model
    torch.testing.assert_close(flat_params(fresh), flat_params(reference), rtol=0, atol=0)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def going_nan(model, batch):
        calls["n"] += 1
        loss, logs = mse(model, batch)
        return (loss * float("nan") if calls["n"] >= 4 else loss), logs

    with pytest.raises(NonFiniteLoss, match="step 3"):
        fit(toy_task(loss=going_nan), cfg(save_every=1), tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-3"]  # older ones retired
    assert json.loads((tmp_path / "checkpoints/step-3/state.json").read_text())["step"] == 3
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "checkpoints/step-3/model.safetensors").values())


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    big = fit(toy_task(), cfg(batch_size=8, grad_accum=1, optimizer="sgd"), tmp_path / "big").model
    acc = fit(toy_task(), cfg(batch_size=2, grad_accum=4, optimizer="sgd"), tmp_path / "acc").model
    torch.testing.assert_close(flat_params(acc), flat_params(big), rtol=1e-5, atol=1e-6)


def test_best_checkpoint_is_loaded_back(tmp_path):
    scores = iter([0.1, 0.9, 0.3])
    seen = {}

    def evaluate(model):
        score = next(scores)
        seen[score] = flat_params(model).clone()
        return {"score": score}

    result = fit(toy_task(evaluate=evaluate), cfg(epochs=3, best_metric="score"), tmp_path)
    assert result.metrics["score"] == 0.9
    torch.testing.assert_close(flat_params(result.model), seen[0.9])


def ddp_worker(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517"]
    cmd = [*launcher, str(REPO / "tests/common/ddp_worker.py"), str(out), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_ddp_two_processes_match_one_process(tmp_path):
    proc = ddp_worker(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"params.rank{r}.pt", weights_only=True) for r in (0, 1))
    torch.testing.assert_close(rank0, rank1, rtol=0, atol=0)
    single = fit(
        toy_task(),
        TrainerConfig(epochs=3, batch_size=8, lr=0.05, optimizer="sgd", scheduler="constant", progress=False),
        tmp_path / "single",
    ).model
    torch.testing.assert_close(rank0, flat_params(single), rtol=1e-5, atol=1e-6)


def test_ddp_resumes_from_accelerate_state_to_the_same_weights(tmp_path):
    """2 gloo ranks, accelerate's save_state inside the crash-safe write: a crash after step 7's checkpoint and a
    relaunch end with the weights of an uninterrupted 2-rank run (dropout on: each rank's RNG is restored)."""
    assert ddp_worker(tmp_path / "straight", "accelerate", "0", "0.3").returncode == 0
    crashed = ddp_worker(tmp_path / "crashed", "accelerate", "7", "0.3")
    assert crashed.returncode != 0 and "simulated crash" in crashed.stderr
    assert not (tmp_path / "crashed" / "params.rank0.pt").exists()
    resumed = ddp_worker(tmp_path / "crashed", "accelerate", "0", "0.3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoints/step-7 (step 7 of 15)" in resumed.stdout  # resumed, not started over
    step7 = tmp_path / "crashed" / "run" / "checkpoints"
    assert not list(step7.glob(".tmp-*")) and not list(step7.glob(".trash-*"))
    for r in (0, 1):
        straight, again = (
            torch.load(tmp_path / d / f"params.rank{r}.pt", weights_only=True) for d in ("straight", "crashed")
        )
        torch.testing.assert_close(again, straight, rtol=0, atol=0)


def kill_worker(out: Path, *kill: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tests.common.kill_worker", str(out), *kill]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_a_kill_at_any_phase_of_a_save_resumes_to_the_same_weights(tmp_path):
    """SIGKILL (a real process, no cleanup) at every phase of saving step 5, then a rerun in the same dir: it resumes
    from the newest complete checkpoint and ends bit-identical to a run never interrupted."""
    assert kill_worker(tmp_path / "straight").returncode == 0
    reference = torch.load(tmp_path / "straight" / "final.pt", weights_only=True)
    for phase in ("written", "renaming", "renamed", "retiring", "deleting"):
        run = tmp_path / phase
        killed = kill_worker(run, phase, "5")
        assert killed.returncode == -9, (phase, killed.stderr[-2000:])
        assert not (run / "final.pt").exists()
        resumed = kill_worker(run)
        assert resumed.returncode == 0, (phase, resumed.stderr[-2000:])
        final = torch.load(run / "final.pt", weights_only=True)
        torch.testing.assert_close(final, reference, rtol=0, atol=0, msg=phase)
        left = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert left == ["step-15"], (phase, left)  # the last one only: no temp, trash or half-deleted directory


def test_a_kill_after_a_best_checkpoint_is_published_reruns_to_the_same_weights_and_metrics(tmp_path):
    """A task that evaluates and keeps its best: killed (SIGKILL) once best-10 is published but before step-10, the
    rerun resumes from step-5, trains steps 6-10 again and publishes best-10 over the killed attempt's (before: every
    rerun failed with "Directory not empty"), ending as a run never interrupted."""
    assert kill_worker(tmp_path / "straight", "best", "0").returncode == 0
    killed = kill_worker(tmp_path / "run", "best", "10")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir()) == ["best-10", "best-5", "step-5"]
    for _ in range(2):  # the rerun, and a rerun of the finished run
        resumed = kill_worker(tmp_path / "run")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "resuming from" in resumed.stdout
        final, reference = (torch.load(tmp_path / d / "final.pt", weights_only=True) for d in ("run", "straight"))
        torch.testing.assert_close(final, reference, rtol=0, atol=0)
        metrics, expected = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("run", "straight"))
        assert metrics == expected and "neg_mse" in metrics


def test_frozen_parameters_stay_out_of_checkpoints_and_resume_is_exact(tmp_path):
    def half_frozen():
        task = toy_task(dropout=0.3)
        task.model[0].requires_grad_(False)  # as a LoRA run's base model
        return task

    reference = fit(half_frozen(), cfg(save_every=2), tmp_path / "straight").model
    calls = {"n": 0}

    def crashing(model, batch):
        calls["n"] += 1
        if calls["n"] == 8:
            raise RuntimeError("simulated crash")
        return mse(model, batch)

    task = half_frozen()
    task.loss = crashing
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(task, cfg(save_every=2), tmp_path / "crashed")
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "crashed/checkpoints/step-6/model.safetensors")) == {"3.weight", "3.bias"}
    resumed = fit(half_frozen(), cfg(save_every=2), tmp_path / "crashed").model
    torch.testing.assert_close(flat_params(resumed), flat_params(reference), rtol=0, atol=0)


def test_checkpoints_by_time_without_a_step_interval(tmp_path):
    fit(toy_task(), cfg(epochs=1, save_every=10**6, save_minutes=0), tmp_path / "never")
    assert not (tmp_path / "never/checkpoints").exists()
    fit(toy_task(), cfg(epochs=1, save_every=10**6, save_minutes=1e-9), tmp_path / "timed")
    assert [p.name for p in (tmp_path / "timed/checkpoints").iterdir()] == ["step-5"]  # each step's, newest kept


def test_lora_with_gradient_checkpointing_trains_the_adapters_and_saves_only_them(tmp_path):
    from common.config import LoraConfig, ModelConfig
    from common.lm import collate, encode_qa, sequence_nll
    from common.models import attach_lora, load_causal_lm

    corpus = [f"Question: What is {i}?\nAnswer: It is {i}." for i in range(16)]
    model_cfg = ModelConfig(name_or_path="tiny-llama", family="phi", lora=LoraConfig(r=4))
    model, tok = load_causal_lm(model_cfg, tmp_path, corpus=corpus)
    model = attach_lora(model, model_cfg)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    data = [encode_qa(tok, "phi", f"What is {i}?", f"It is {i}.") for i in range(16)]

    def nll(m, batch):
        total, count, _ = sequence_nll(m, batch)
        return total.sum() / count.sum(), {}

    task = Task(model=model, train_data=data, collate=lambda b: collate(b, tok.pad_token_id), loss=nll)
    trained = fit(task, cfg(epochs=1, batch_size=4, lr=1e-2, gradient_checkpointing=True), tmp_path / "run").model
    assert getattr(trained, "is_activation_checkpointing", None) or trained.is_gradient_checkpointing
    changed = {k for k, v in trained.named_parameters() if not torch.equal(v.detach(), before[k])}
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_A" in k for k in changed) and any("lora_B" in k for k in changed)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "run/checkpoints/step-4/model.safetensors")
    assert saved and all("lora_" in k for k in saved)


def wide_task() -> Task:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 200), torch.nn.Tanh(), torch.nn.Linear(200, 1))  # ~6 KB of weights
    return Task(model=model, train_data=toy_data(), collate=toy_collate, loss=mse)


def test_a_full_disk_is_one_line_and_leaves_no_partial_checkpoint(small_disk):
    # Weights and Adam's two moments (~20 KB a checkpoint) fit twice, not three times: the third save fails.
    with pytest.raises(UserError) as e:
        fit(wide_task(), cfg(epochs=6, save_every=1), small_disk / "run")
    message = str(e.value)
    assert "cannot write" in message and "no space left on device" in message.lower() and "\n" not in message
    assert "; the previous checkpoint " in message and message.endswith(" is kept")
    left = sorted(p.name for p in (small_disk / "run/checkpoints").iterdir())
    assert len(left) == 1 and left[0].startswith("step-")  # no .tmp-* beside it
    state = json.loads((small_disk / "run/checkpoints" / left[0] / "state.json").read_text())
    assert state["step"] == int(left[0].split("-")[1])


def test_a_read_only_place_is_one_line(small_disk):
    (small_disk / "run").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(
        UserError, match=r"cannot write .*run/checkpoints.*: read-only file system; no checkpoint was saved"
    ):
        fit(toy_task(), cfg(epochs=1), small_disk / "run")


def test_dataloader_workers_feed_the_same_batches_in_the_same_order(tmp_path):
    main = fit(toy_task(dropout=0.3), cfg(batch_size=4, grad_accum=2), tmp_path / "main").model
    workers = fit(toy_task(dropout=0.3), cfg(batch_size=4, grad_accum=2, num_workers=2), tmp_path / "workers").model
    torch.testing.assert_close(flat_params(workers), flat_params(main), rtol=0, atol=0)

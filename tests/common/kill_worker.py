"""Train the toy task (dropout on, a checkpoint every step) and, if asked, SIGKILL this process at one phase of the
save of one step: `python -m tests.common.kill_worker <out_dir> [<phase> <step>]`. Writes the final weights to
<out_dir>/final.pt and the returned metrics to <out_dir>/metrics.json when training completes.

Phases of a save: `written` (the temp dir holds the weights), `renaming` (state.json written, just before the rename),
`renamed` (the new checkpoint in place, the old one not yet retired), `retiring` (the old one renamed to trash),
`deleting` (the trash half deleted). Phase `best` trains a task that evaluates at every epoch end, keeps the best
checkpoint and saves a step checkpoint at epoch ends only; it dies right after best-<step> is published, before
that step's checkpoint is written.
"""

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import torch

import common.trainer as trainer
from common.checkpoint import complete
from common.io import writer_tag
from common.trainer import TrainerConfig, fit
from tests.common.toy import flat_params, toy_data, toy_task

out, phase, step = Path(sys.argv[1]), *(sys.argv[2:] or [None, "0"])
ours = f".tmp-step-{step}-"
best = f".tmp-best-{step}-"


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


real_save, real_rename, real_rmtree = trainer.save_file, os.rename, shutil.rmtree


def save_file(tensors, path, *args, **kwargs):
    real_save(tensors, path, *args, **kwargs)
    if phase == "written" and Path(path).parent.name.startswith(ours):
        die()


def rename(src, dst):
    src, dst = Path(src), Path(dst)
    if phase == "renaming" and src.name.startswith(ours):
        die()
    real_rename(src, dst)
    if phase == "renamed" and src.name.startswith(ours):
        die()
    if phase == "best" and src.name.startswith(best):
        die()
    if phase == "retiring" and dst.name.startswith(".trash-step-") and dst.name.endswith(f"-{writer_tag()}"):
        if complete(dst.parent, "step-", "state.json")[0].name == f"step-{step}":
            die()


def rmtree(path, *args, **kwargs):
    path = Path(path)
    if phase == "deleting" and path.name.startswith(".trash-step-"):
        (path / "model.safetensors").unlink()
        die()
    real_rmtree(path, *args, **kwargs)


def evaluate(model: torch.nn.Module) -> dict[str, float]:
    x, y = (torch.stack(t) for t in zip(*toy_data()))
    return {"neg_mse": -torch.nn.functional.mse_loss(model(x), y).item()}


trainer.save_file, os.rename, shutil.rmtree = save_file, rename, rmtree
evaluating = phase == "best" or (out / "evaluating").exists()
cfg = TrainerConfig(epochs=3, batch_size=8, lr=0.05, warmup_steps=2, save_every=1, progress=False)
if evaluating:  # remembered for the rerun, which is started without a phase
    (out / "evaluating").parent.mkdir(parents=True, exist_ok=True)
    (out / "evaluating").touch()
    cfg = TrainerConfig(epochs=3, batch_size=8, lr=0.05, warmup_steps=2, best_metric="neg_mse", progress=False)
result = fit(toy_task(dropout=0.3, evaluate=evaluate if evaluating else None), cfg, out)
torch.save(flat_params(result.model), out / "final.pt")
(out / "metrics.json").write_text(json.dumps(result.metrics))

"""Train the toy task (dropout on, a checkpoint every step) and, if asked, SIGKILL this process at one phase of the
save of one step: `python -m tests.common.kill_worker <out_dir> [<phase> <step>]`. Writes the final weights to
<out_dir>/final.pt when training completes.

Phases of a save: `written` (the temp dir holds the weights), `renaming` (state.json written, just before the rename),
`renamed` (the new checkpoint in place, the old one not yet retired), `retiring` (the old one renamed to trash),
`deleting` (the trash half deleted).
"""

import os
import shutil
import signal
import sys
from pathlib import Path

import torch

import common.trainer as trainer
from common.trainer import TrainerConfig, fit
from tests.common.toy import flat_params, toy_task

out, phase, step = Path(sys.argv[1]), *(sys.argv[2:] or [None, "0"])
ours = f".tmp-step-{step}-"


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
    if phase == "retiring" and dst.name.startswith(".trash-step-") and dst.name.endswith(f"-{os.getpid()}"):
        if trainer._complete(dst.parent, "step-", "state.json")[0].name == f"step-{step}":
            die()


def rmtree(path, *args, **kwargs):
    path = Path(path)
    if phase == "deleting" and path.name.startswith(".trash-step-"):
        (path / "model.safetensors").unlink()
        die()
    real_rmtree(path, *args, **kwargs)


trainer.save_file, os.rename, shutil.rmtree = save_file, rename, rmtree
cfg = TrainerConfig(epochs=3, batch_size=8, lr=0.05, warmup_steps=2, save_every=1, progress=False)
result = fit(toy_task(dropout=0.3), cfg, out)
torch.save(flat_params(result.model), out / "final.pt")

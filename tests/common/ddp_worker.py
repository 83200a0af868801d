"""Run under torchrun: trains the toy task (2 ranks x batch 2 x 2 accumulated micro-batches = one global batch of 8)
and saves each rank's final parameters. Optional arguments: the checkpoint state (own | accelerate), a step at which
every rank crashes (after that step's checkpoint, so that a second launch resumes; 0: none) and the dropout rate
(which makes the result depend on each rank's restored RNG state).
Usage: ddp_worker.py OUT [STATE [CRASH_AT_STEP [DROPOUT]]]"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from common.trainer import TrainerConfig, fit  # noqa: E402
from tests.common.toy import flat_params, mse, toy_task  # noqa: E402

out = Path(sys.argv[1])
state = sys.argv[2] if len(sys.argv) > 2 else "own"
crash_at = int(sys.argv[3]) if len(sys.argv) > 3 else 0
dropout = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
cfg = TrainerConfig(
    epochs=3,
    batch_size=2,
    grad_accum=2,
    lr=0.05,
    optimizer="sgd",
    scheduler="constant",
    progress=False,
    save_every=1,
    checkpoint_state=state,
)
calls = {"n": 0}


def loss(model, batch):
    calls["n"] += 1
    if crash_at and calls["n"] > crash_at * cfg.grad_accum:  # the first micro-batch after step crash_at
        raise RuntimeError("simulated crash")
    return mse(model, batch)


result = fit(toy_task(dropout=dropout, loss=loss), cfg, out / "run")
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
torch.save(flat_params(result.model), out / f"params.rank{rank}.pt")

"""Run under torchrun: trains the toy task (2 ranks x batch 2 x 2 accumulated micro-batches = one global batch of 8)
and saves each rank's final parameters."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from common.trainer import TrainerConfig, fit  # noqa: E402
from tests.common.toy import flat_params, toy_task  # noqa: E402

out = Path(sys.argv[1])
cfg = TrainerConfig(
    epochs=3, batch_size=2, grad_accum=2, lr=0.05, optimizer="sgd", scheduler="constant", progress=False
)
result = fit(toy_task(), cfg, out / "run")
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
torch.save(flat_params(result.model), out / f"params.rank{rank}.pt")

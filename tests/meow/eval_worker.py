"""Run plainly or under torchrun: TOFU eval logs and MEMO scores of the cached fine-tuned tiny target on a few rows,
written by the main process to <out>/eval.world<W>.json. Arguments: OUT CACHE_DIR."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from common.config import compose  # noqa: E402
from common.dist import is_main_process, rank, world_size  # noqa: E402
from methods.meow import memo as memo_module  # noqa: E402
from methods.meow import tofu_eval  # noqa: E402
from methods.meow.config import EvalConfig, MemoConfig  # noqa: E402
from methods.meow.memo import memo_batched  # noqa: E402
from methods.meow.pipeline import finetuned_path, load_lm, source_of  # noqa: E402
from tests.meow.conftest import SMALL  # noqa: E402

out, cache = Path(sys.argv[1]), sys.argv[2]
counts = {"nll": 0, "continuations": 0}  # items this process itself computed


def counting(module, name: str, key: str) -> None:
    fn = getattr(module, name)

    def wrapped(model, tokenizer, items, *args, **kwargs):
        counts[key] += len(items)
        return fn(model, tokenizer, items, *args, **kwargs)

    setattr(module, name, wrapped)


counting(tofu_eval, "_answer_nll", "nll")
counting(memo_module, "continuations", "continuations")
cfg = compose("meow", f"cache_dir={cache}", *SMALL)
source = source_of(cfg)
model, tokenizer = load_lm(cfg, source, finetuned_path(cfg, source, "target"))
rows = source.load("forget10_perturbed")[:5]  # 5 rows: the two ranks get unequal shares
log = tofu_eval.eval_log(
    model.eval(),
    tokenizer,
    rows,
    "forget",
    EvalConfig(batch_size=4, max_new_tokens=24),
    family=cfg.model.family,
    max_length=cfg.data.max_length,
)
pairs = [(r["question"], a) for r in rows for a in (r["answer"], r["perturbed_answer"][0])]
memo = memo_batched(model, tokenizer, pairs, MemoConfig(max_new_tokens=24, batch_size=8))
(out / f"counts.world{world_size()}.rank{rank()}.json").write_text(json.dumps(counts))
if is_main_process():
    (out / f"eval.world{world_size()}.json").write_text(json.dumps({"log": log, "memo": memo}))

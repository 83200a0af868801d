"""Run plainly or under torchrun: the NLU, NLG and robustness metrics of the cached fine-tuned tiny target on a few
items, written by the main process to <out>/axes.world<W>.json. Arguments: OUT CACHE_DIR."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from common.config import compose  # noqa: E402
from common.dist import is_main_process, world_size  # noqa: E402
from methods.meow import mia, nlg, nlu  # noqa: E402
from methods.meow.config import MiaConfig, NlgConfig, NluConfig  # noqa: E402
from methods.meow.pipeline import finetuned_path, load_lm, source_of  # noqa: E402
from tests.meow.conftest import SMALL  # noqa: E402

out, cache = Path(sys.argv[1]), sys.argv[2]
cfg = compose("meow", f"cache_dir={cache}", *SMALL)
source = source_of(cfg)
model, tokenizer = load_lm(cfg, source, finetuned_path(cfg, source, "target"))
model.eval()
data = out / "nlu"  # the generated sets in the published layouts (written once by the one-process run)
if world_size() == 1:
    nlu.synthetic_tasks(data, seed=0, n_val=5, n_train=4)
metrics = nlu.evaluate(model, tokenizer, NluConfig(max_new_tokens=6, batch_size=2, shots=2), data)
full = source.load("full")
texts = [f"{a['answer']} {b['answer']}" for a, b in zip(full[:25], full[25:50])]  # 25: unequal shares
metrics |= nlg.evaluate(model, tokenizer, texts, NlgConfig(prompt_tokens=8, batch_size=4))
fam = dict(family=cfg.model.family, max_length=cfg.data.max_length)
metrics |= mia.evaluate(model, tokenizer, full[:5], source.load("holdout10")[:6], MiaConfig(max_new_tokens=8), **fam)
if is_main_process():
    (out / f"axes.world{world_size()}.json").write_text(json.dumps(metrics))

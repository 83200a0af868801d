"""Same settings, same result, cold or warm cache: every method's main job on a shrunk embedded default, run through
the CLI twice in fresh run dirs, first on an empty cache_dir and then on the cache the first run filled, writes the
same metrics into results.json, exactly.

What a cold run builds and a warm one finds (tiny models, fine-tuned models, features, trained stages) must not change
what later steps draw from the RNG (common.seeding). Each shrunk run takes well under 20 s of CPU on a 2-core machine.
"""

from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path

import pytest

from tests.helpers import run_method

# (command, overrides): the embedded default with fewer records, steps and models, each still running every stage.
SHRUNK: dict[str, tuple[str, list[str]]] = {
    "dqmq": (
        "train",
        [
            "data.max_train=100",
            "data.max_test=20",
            "data.copies=1",
            "data.image_size=12",
            "data.corruptions=[gaussian_noise]",
            "data.severities=[3]",
            "net.width=4",
            "quant.bits=[2,8]",
            "fixed_bits=[8]",
            "pretrain.trainer.epochs=1",
            "pretrain.trainer.batch_size=32",
            "trainer.epochs=1",
            "trainer.batch_size=32",
        ],
    ),
    "esc_eval": (
        "train",
        [
            "synthetic.role_dialogues=4",
            "synthetic.rank_train=8",
            "synthetic.rank_test=4",
            "synthetic.eval_cards=2",
            "dialogue.rounds=1",
            "dialogue.batch_cards=2",
            "role.trainer.max_steps=1",
            "role.trainer.batch_size=4",
            "role.max_new_tokens=4",
            "trainer.max_steps=1",
            "trainer.batch_size=4",
            "rank.max_new_tokens=3",
            "esc.max_new_tokens=4",
        ],
    ),
    "fine": (
        "eval",
        ["synthetic.per_category=2", "trainer.epochs=1", "subject.max_new_tokens=8", "judge.chat.max_new_tokens=8"],
    ),
    "flames": ("train", ["synthetic.per_dimension=30", "trainer.epochs=1"]),
    "guardrank": ("train", ["synthetic.per_dimension=30", "trainer.epochs=1", "encoder.trainer.epochs=1"]),
    "m4": (
        "train",
        [
            "synthetic.n_patients=8",
            "synthetic.height=512",
            "synthetic.width=512",
            "synthetic.genes=[TP53,PIK3CA]",
            "extract.input_size=32",
            "extract.num_workers=0",
            "trainer.epochs=1",
            "train.n_splits=1",
        ],
    ),
    "medmfg": (
        "train",
        [
            "data.image_size=16",
            "trainer.epochs=1",
            "generator.episodes=40",
            "eval.episodes=5",
            "dc.samples=10",
            "generator.samples=10",
        ],
    ),
    "meow": (
        "train",
        [
            "data.n_authors=2",
            "data.n_general=4",
            "finetune.trainer.epochs=1",
            "finetune.trainer.warmup_epochs=0",
            "trainer.epochs=1",
            "trainer.warmup_epochs=0",  # so that the one epoch unlearns (at lr 0 every method would leave the target)
            "memo.max_new_tokens=16",
            "eval.max_new_tokens=16",
        ],
    ),
}

# Metrics that are no result of the method, excluded by name:
NOT_RESULTS = (
    "*/train_seconds",  # M4: wall-clock time of a model's training
    "*/ms_per_episode",  # MedMFG: wall-clock time of a method per episode
    # The bookkeeping of resumable work: how many items this run did and how many it found done in the cache
    # (M4 tile/extract, ESC-Eval dialogues, FINE questions). Their sum is compared below.
    "*/done",
    "*/skipped",
)


def results(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "results.json").read_text())["metrics"]


def same(a: object, b: object) -> bool:
    """Exactly equal; NaN (a correlation of constant scores, say) equals NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_every_method_is_covered():
    from common.demo import available_methods

    assert sorted(SHRUNK) == available_methods()


@pytest.mark.parametrize("method", sorted(SHRUNK))
def test_a_warm_cache_gives_the_metrics_of_a_cold_one(method, tmp_path):
    command, overrides = SHRUNK[method]
    cache = tmp_path / "cache"
    metrics = {}
    for run in ("cold", "warm"):
        proc = run_method(
            method,
            command,
            *overrides,
            "logger.kind=none",
            f"cache_dir={cache}",
            f"hydra.run.dir={tmp_path / run}",
            cwd=tmp_path,
        )
        assert proc.returncode == 0, f"{run} run:\n{proc.stderr[-3000:]}"
        metrics[run] = results(tmp_path / run)
    cold, warm = metrics["cold"], metrics["warm"]
    assert any(cache.iterdir())  # the cold run filled the cache the warm one read
    excluded = {k for k in {*cold, *warm} if any(fnmatch.fnmatch(k, p) for p in NOT_RESULTS)}
    for key in {k.rsplit("/", 1)[0] for k in excluded if k.endswith(("/done", "/skipped"))}:
        total = [m.get(f"{key}/done", 0) + m.get(f"{key}/skipped", 0) for m in (cold, warm)]
        assert total[0] == total[1] > 0, f"{key}: done + skipped"
    one_only = sorted((set(cold) ^ set(warm)) - excluded)
    assert not one_only, f"{method}: metrics of one run only: {one_only}"
    differ = {k: (cold[k], warm[k]) for k in sorted(set(cold) - excluded) if not same(cold[k], warm[k])}
    assert not differ, f"{method}: {len(differ)} of {len(cold)} metrics differ (cold, warm): {differ}"

"""Commands of `python -m methods.flames`: train, eval, score.

With no data configured `train` makes synthetic records in the release's format, writes them to the run dir and reads
them back like any user file; every command reads records through methods/flames/data.py. The flows are
common/scorers.py's; this module wires the Flames scorer's parts into them.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from common import scorers
from common.errors import UserError
from methods.flames import released, synthetic
from methods.flames.data import DIMENSIONS, as_json, read_file
from methods.flames.flames import scorer_scores, train_scorer
from methods.flames.metrics import accuracy_metrics, accuracy_table, harmless_metrics, harmless_table

PARTS = scorers.ScorerParts(
    name="flames",
    dimensions=DIMENSIONS,
    read_file=read_file,
    as_json=as_json,
    make_records=synthetic.make_records,
    train_scorer=train_scorer,
    predict=scorer_scores,
    eval_metrics=accuracy_metrics,
    train_counts_key="train_score_counts",
    eval_table=accuracy_table,
    score_metrics=harmless_metrics,
    score_table=harmless_table,
)


# The commands, common/scorers.py's flows on these parts.
# train: train the multi-head scorer, save it as run_dir/scorer/, score the test split.
# eval: score labelled records with a saved scorer: accuracy per dimension.
# score: score a model's responses: harmless rate and harmless score per dimension and overall.
train = partial(scorers.train, PARTS)
eval = partial(scorers.eval, PARTS)  # noqa: A001 - the command is called eval
score = partial(scorers.score, PARTS)
eval_inputs = partial(scorers.eval_inputs, PARTS)  # read and checked before the scorer is loaded (Command.inputs)
score_inputs = partial(scorers.score_inputs, PARTS)
_scorer_dir = partial(scorers.scorer_dir, PARTS)  # a scorer dir: the one named, else the latest train run's


def convert(cfg, run_dir: Path) -> dict[str, float]:
    """The released scorer as run_dir/scorer/, loaded strictly (every key mapped, none left over)."""
    out = released.convert(cfg.convert.release, run_dir / "scorer")
    print(
        f"scorer: {out}\nscore with: python -m methods.flames score +experiment=flames/released score.scorer={out} score.inputs=[...]"
    )
    return {}


def convert_inputs(cfg) -> None:
    """The release's config.json read and checked before its weights are."""
    folder = Path(cfg.convert.release)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UserError(f"{folder}: no config.json (expected the flames-scorer release folder)")
    released.llama_config(json.loads(config_path.read_text(encoding="utf-8")), config_path)

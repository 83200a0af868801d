"""Commands of `python -m methods.guardrank`: train, eval, score.

With no data configured `train` makes synthetic records in the release's format, writes them to the run dir and reads
them back like any user file; every command reads records through methods/guardrank/data.py. The flows are
common/scorers.py's; this module wires GuardRank's parts into them.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

from common import scorers
from common.textclf import input_files, read_scorer_meta
from methods.guardrank import released, synthetic
from methods.guardrank.data import NUM_LABELS, Record, as_json, one_model, read_file
from methods.guardrank.guardrank import grade, train_scorer
from methods.guardrank.metrics import attack_metrics, attack_table, confusion_png, grading_metrics, grading_table
from methods.guardrank.truthfulness import noise_grades, position_grades, read_answers


def _confusion(run_dir: Path, records: list[Record], grades: list[int]) -> None:
    print(f"confusion matrices: {confusion_png(run_dir / 'confusion.png', records, grades)}")


PARTS = scorers.ScorerParts(
    name="guardrank",
    dimensions=tuple(NUM_LABELS),
    read_file=read_file,
    as_json=as_json,
    make_records=synthetic.make_records,
    train_scorer=train_scorer,
    predict=grade,
    eval_metrics=grading_metrics,
    train_counts_key="train_label_counts",
    eval_table=grading_table,
    score_metrics=attack_metrics,
    score_table=attack_table,
    scored=lambda r, g: {**r.raw, "dimension": r.dimension, "score": g, "source": r.where},
    scored_what="graded responses",
    on_predictions=_confusion,
)


# The commands, common/scorers.py's flows on these parts.
# train: train both judges, save them as run_dir/scorer/, grade the test split.
# eval: grade labelled records with a saved scorer: accuracy, macro-F1 and confusion per dimension.
# score: grade a model's responses: ASD and PAR per dimension, MLLMGuard's five columns and avg.
train = partial(scorers.train, PARTS)
eval = partial(scorers.eval, PARTS)  # noqa: A001 - the command is called eval
eval_inputs = partial(scorers.eval_inputs, PARTS)  # read and checked before the scorer is loaded (Command.inputs)
_scorer_dir = partial(scorers.scorer_dir, PARTS)  # a scorer dir: the one named, else the latest train run's


def _score_parts(cfg) -> scorers.ScorerParts:
    """PARTS with score's settings: noise-injection's gold letters and which truthfulness column to report."""
    answers = read_answers(cfg.score.noise_answers) if cfg.score.noise_answers else None
    return replace(
        PARTS,
        predict=partial(grade, answers=answers),
        score_metrics=partial(attack_metrics, truthfulness=cfg.score.truthfulness),
    )


def score(cfg, run_dir: Path) -> dict[str, float]:
    return scorers.score(_score_parts(cfg), cfg, run_dir)


def score_inputs(cfg) -> None:
    """Before the scorer is loaded: its scorer.json and the responses read, the rule-graded sets graded."""
    read_scorer_meta(scorers.scorer_dir(PARTS, cfg.score.scorer))
    files = input_files(cfg.score.inputs)
    one_model(files)
    records = [r for f in files for r in read_file(f, False)]
    answers = read_answers(cfg.score.noise_answers) if cfg.score.noise_answers else None
    noise_grades(records, [i for i, r in enumerate(records) if r.dimension == "noise-injection"], answers)
    position_grades(records, [i for i, r in enumerate(records) if r.dimension == "position-swapping"])


def convert(cfg, run_dir: Path) -> dict[str, float]:
    """The release as run_dir/scorer/, every weight checked against its map."""
    c = cfg.convert
    out = released.convert(c.adapter, c.decoder_base, run_dir / "scorer", c.hallucination, c.encoder_base, c.unpickle)
    print(
        f"scorer: {out}\nscore with: python -m methods.guardrank score +experiment=guardrank/official score.scorer={out} ..."
    )
    return {}


def convert_inputs(cfg) -> None:
    """The adapter's weights checked against its config and the base's before anything is written."""
    released.check_adapter(Path(cfg.convert.adapter), Path(cfg.convert.decoder_base))

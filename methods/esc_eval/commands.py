"""Commands of `python -m methods.esc_eval`: train-role, train-rank, evaluate, eval-rank, and train (all four).

Every data.* left null is the synthetic set (methods/esc_eval/synthetic.py); `train` then runs the whole paper
offline on tiny models: ESC-Role, ESC-RANK, the role-play evaluation of a model under test, and ESC-RANK against
held-out human scores.
"""

from __future__ import annotations

import gc
from pathlib import Path

import torch

from common.config import as_dict
from common.errors import UserError
from common.io import write_json
from common.items import ItemsFailed, summarize
from common.loggers import make_logger
from common.stages import timed
from methods.esc_eval import pipeline, rank
from methods.esc_eval.config import EscEvalConfig
from methods.esc_eval.dialogue import Protocol, load_saved, run_dialogues
from methods.esc_eval.formats import write_scores
from methods.esc_eval.metrics import agreement_table, model_scores, rank_metrics, score_table


def _threads(cfg: EscEvalConfig) -> None:
    if cfg.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(cfg.cpu_threads)


def train_role(cfg: EscEvalConfig, run_dir: Path) -> dict[str, float]:
    """Fine-tune ESC-Role (or reuse the one these settings made)."""
    _threads(cfg)
    path = pipeline.role_model(cfg, make_logger(cfg.logger, run_dir, as_dict(cfg)))
    write_json(run_dir / "role_model.json", {"role": path})
    print(f"ESC-Role: {path}")
    return {"role/dialogues": float(len(pipeline.role_data(cfg)[1]))}


def train_rank(cfg: EscEvalConfig, run_dir: Path) -> dict[str, float]:
    """Fine-tune ESC-RANK: an adapter per dimension, or one shared model (or reuse those these settings made)."""
    _threads(cfg)
    root, facts = pipeline.rank_dir(cfg, make_logger(cfg.logger, run_dir, as_dict(cfg)))
    write_json(run_dir / "rank_model.json", {"rank": str(root)})
    print(f"ESC-RANK: {root}")
    return facts


def eval_rank(cfg: EscEvalConfig, run_dir: Path) -> dict[str, float]:
    """ESC-RANK against the held-out human scores: accuracy, within-one, Pearson, Spearman, unparseable share."""
    _threads(cfg)
    k = cfg.rank
    root, _ = pipeline.rank_dir(cfg)
    dialogues, human = pipeline.rank_data(cfg, "rank_test")
    # The majority baseline comes from the training scores; with released adapters and no training file given,
    # from the held-out scores themselves (which favours the baseline).
    own_train = cfg.data.rank_train is not None or cfg.data.rank_test is None
    baseline = pipeline.rank_data(cfg, "rank_train")[1] if own_train else human
    with timed(f"ESC-RANK scoring {len(dialogues)} held-out dialogues"):
        scored = rank.score_dialogues(
            pipeline.rank_models(cfg, root, cfg.data.language), list(dialogues.values()), k.dimensions,
            rank.rubrics(k.rubric_file)[cfg.data.language], k.max_length, k.max_new_tokens, k.batch_size, k.parse,
            k.base_system,
        )  # fmt: skip
    predicted = dict(zip(dialogues, scored.scores, strict=True))
    write_scores(run_dir / "rank_test_predicted.json", predicted)
    write_json(run_dir / "rank_test_outputs.json", dict(zip(dialogues, scored.outputs, strict=True)))
    metrics = rank_metrics(predicted, human, baseline, k.dimensions)
    metrics["rank/test_prompts_cut"] = float(scored.cut)
    # The held-out set as two more "models" of the score table: how ESC-RANK's mean scores compare with the humans'.
    metrics.update(model_scores("rank_test(ESC-RANK)", scored.scores, k.dimensions))
    metrics.update(model_scores("rank_test(human)", list(human.values()), k.dimensions))
    print(f"majority baseline from {'the training' if own_train else 'the held-out'} scores")
    if cfg.command == "eval-rank":  # `train` prints its table at the end
        print("\n" + agreement_table(metrics))
    return metrics


def evaluate(cfg: EscEvalConfig, run_dir: Path) -> dict[str, float]:
    """Role-play every card with the model under test (resumable), then score the dialogues with ESC-RANK."""
    _threads(cfg)
    cards = pipeline.eval_cards(cfg)
    role_path = pipeline.role_model(cfg)
    root, _ = pipeline.rank_dir(cfg)  # trained (if needed) and checked before any dialogue: a failure wastes none
    for language in sorted({c.language for c in cards}):
        pipeline.rank_folders(cfg, root, language)
    d = cfg.dialogue
    store = pipeline.dialogue_store(cfg, role_path, cards)
    print(f"dialogues of {cfg.esc.name} with ESC-Role on {len(cards)} cards: {store}")
    role, esc = pipeline.responders(cfg, role_path)
    with timed(f"{d.rounds}-round dialogues"):
        outcomes = run_dialogues(
            cards, role, esc, Protocol(d.rounds, d.opening, d.role_system, d.esc_system), store, d.batch_cards
        )
    del role, esc
    gc.collect()  # ESC-Role and the model under test leave memory before ESC-RANK comes in
    metrics = pipeline.score_saved(cfg, root, cards, load_saved(store, cards), run_dir)
    if cfg.command == "evaluate":  # `train` prints its table at the end
        print("\n" + score_table(metrics))
    try:
        metrics.update(summarize(outcomes, run_dir, "dialogues"))
    except ItemsFailed as e:  # the finished dialogues are scored and kept; rerun to resume the others
        raise ItemsFailed(str(e), {**metrics, **e.metrics}) from None
    return metrics


def train(cfg: EscEvalConfig, run_dir: Path) -> dict[str, float]:
    """The whole method: train-role, train-rank, evaluate, eval-rank."""
    metrics = {**train_role(cfg, run_dir), **train_rank(cfg, run_dir)}
    failed: ItemsFailed | None = None
    try:
        metrics.update(evaluate(cfg, run_dir))
    except ItemsFailed as e:  # ESC-RANK is still evaluated; the failure is reported at the end
        metrics.update(e.metrics)
        failed = e
    metrics.update(eval_rank(cfg, run_dir))
    if failed is not None:
        raise ItemsFailed(str(failed), metrics)
    return metrics


# ---------------------------------------------------------------- inputs
# Each command's input files, read and checked by the CLI before the command runs (common.cli.Command.inputs): a bad
# file is one line before any model is loaded or trained. The same readers as the commands' own.


def role_inputs(cfg: EscEvalConfig) -> None:
    """train-role: the role cards and dialogues, when ESC-Role is to be trained."""
    if not cfg.role.trained:
        pipeline.role_data(cfg)


def rank_inputs(cfg: EscEvalConfig) -> None:
    """train-rank: the rubrics, and the scored training dialogues when ESC-RANK is to be trained."""
    if cfg.rank.base_system and cfg.rank.trained and cfg.rank.rubric_file is None:
        # The released preset without score.py: its adapters would see our rubrics, never their training's.
        raise UserError(
            "rank.base_system=true scores trained adapters with InternLM2's prompts (the released preset): give "
            "rank.rubric_file=<ESC-Eval>/score.py, the rubrics they were trained with"
        )
    rank.rubrics(cfg.rank.rubric_file)
    if not cfg.rank.trained:
        pipeline.rank_data(cfg, "rank_train")


def _trained_rank(cfg: EscEvalConfig, languages: set[str]) -> None:
    if cfg.rank.trained:
        for language in sorted(languages):
            pipeline.rank_folders(cfg, Path(cfg.rank.trained), language)


def evaluate_inputs(cfg: EscEvalConfig) -> None:
    """evaluate: the cards, and what ESC-Role and ESC-RANK are trained on (or the trained ESC-RANK's folders)."""
    cards = pipeline.eval_cards(cfg)
    role_inputs(cfg)
    rank_inputs(cfg)
    _trained_rank(cfg, {c.language for c in cards})


def eval_rank_inputs(cfg: EscEvalConfig) -> None:
    """eval-rank: the held-out scored dialogues, and what ESC-RANK is trained on (or its folders)."""
    pipeline.rank_data(cfg, "rank_test")
    rank_inputs(cfg)
    if cfg.data.rank_train is not None:  # the majority baseline's scores, even when ESC-RANK is given trained
        pipeline.rank_data(cfg, "rank_train")
    _trained_rank(cfg, {cfg.data.language})


def train_inputs(cfg: EscEvalConfig) -> None:
    """train: every command's inputs."""
    evaluate_inputs(cfg)
    eval_rank_inputs(cfg)

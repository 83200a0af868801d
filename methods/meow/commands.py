"""The MEOW commands: finetune → invert → memo → train (select + unlearn + evaluate), eval, and score (logs only).

`train` alone runs the whole pipeline (methods/meow/pipeline.py); each stage is also a command of its own for
cluster use, and all of them share the stages' cached outputs.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from common.config import as_dict
from common.io import write_json
from common.items import shard_items, shard_then_merge
from common.loggers import make_logger
from common.stages import timed
from methods.meow import axes, tofu_eval
from methods.meow.config import MeowConfig
from methods.meow.memo import answer_keys
from methods.meow.pipeline import (
    eval_splits,
    evaluate_model,
    finetuned_path,
    given_scored_rows,
    inverted_rows,
    load_lm,
    memo_histogram,
    memo_path,
    reference_forget_log,
    retain_logs,
    retain_model,
    score,
    scored_rows,
    selection,
    source_of,
    unlearn,
    unlearned_key,
)


def finetune(cfg: MeowConfig, run_dir: Path) -> dict[str, float]:
    """Fine-tune the target model on the full split and the retain model on the retain split (both stages)."""
    source = source_of(cfg)
    logger = make_logger(cfg.logger, run_dir)
    paths = {which: finetuned_path(cfg, source, which, logger) for which in ("target", "retain")}
    forget = source.load(f"{cfg.data.forget_split}_perturbed")
    metrics = {}
    for which, path in paths.items():
        print(f"{which} model: {path}")
        model, tokenizer = load_lm(cfg, source, path)
        log = tofu_eval.eval_log(
            model.eval(),
            tokenizer,
            forget,
            "forget",
            cfg.eval,
            family=cfg.model.family,
            max_length=cfg.data.max_length,
        )
        metrics[f"{which}/forget_rouge"] = tofu_eval.set_metrics("forget", log)["rouge"]
    write_json(run_dir / "models.json", paths)
    return metrics


def invert(cfg: MeowConfig, run_dir: Path) -> dict[str, float]:
    """Write (or resume) the inverted facts for the forget split."""
    rows, path = inverted_rows(cfg, source_of(cfg))
    write_json(run_dir / "inverted.json", rows)
    print(f"inverted facts: {path}")
    counts = [len(answer_keys(r)) - 1 for r in rows]
    return {"rows": float(len(rows)), "answers_per_row": sum(counts) / len(counts)}


def memo(cfg: MeowConfig, run_dir: Path) -> dict[str, float]:
    """MEMO of every true and inverted answer under the target model; shard=i num_shards=n splits the rows."""
    source = source_of(cfg)
    rows, _ = inverted_rows(cfg, source)
    target = finetuned_path(cfg, source, "target")
    final = memo_path(cfg, target, rows)
    scored = shard_then_merge(final, rows, cfg.shard, cfg.num_shards, lambda part: score(cfg, source, target, part))
    if scored is None:  # other shards are still running; the last one merges
        return {"rows": float(len(shard_items(rows, cfg.shard, cfg.num_shards)))}
    write_json(run_dir / "memo.json", scored)
    print(f"MEMO scores: {final}")
    return {"rows": float(len(scored)), **memo_histogram(scored, run_dir / "memo_hist.png")}


def train(cfg: MeowConfig, run_dir: Path) -> dict[str, float]:
    """MEOW end to end (and `compare` baselines): fine-tune, invert, MEMO, select, unlearn, evaluate."""
    methods = [cfg.method, *[m for m in cfg.compare if m != cfg.method]]
    source = source_of(cfg)
    logger = make_logger(cfg.logger, run_dir, as_dict(cfg))
    uses_meow = any(m.startswith("meow") for m in methods)
    # Input files are checked first (a MEMO file also for its scores), so a bad one stops the run before any training.
    given = given_scored_rows(cfg, source) if uses_meow and cfg.memo.path else None
    selected = selection(cfg, *given) if given else None
    inverted = inverted_rows(cfg, source)[0] if uses_meow and given is None else None
    axis_data = axes.inputs(cfg, source)
    tofu = "tofu" in cfg.eval.axes
    retain = retain_logs(cfg, source, logger) if tofu else None
    reference = reference_forget_log(cfg, retain) if tofu else None
    target = finetuned_path(cfg, source, "target", logger)
    metrics: dict[str, float] = {}
    if uses_meow:
        scored, scored_path = given or scored_rows(cfg, source, target, inverted or [])
        write_json(run_dir / "memo.json", scored)
        metrics.update(memo_histogram(scored, run_dir / "memo_hist.png"))
        selected = selected or selection(cfg, scored, scored_path)
        write_json(run_dir / "selected.json", selected)

    target_lm = lambda: load_lm(cfg, source, target)  # noqa: E731
    run = partial(evaluate_model, cfg, source, reference=reference, axis_data=axis_data, featurizer=target_lm)
    results: dict[str, dict[str, float]] = {}
    with timed("evaluation of the fine-tuned model"):
        results["finetuned"] = run("finetuned", target, target_lm, out_dir=run_dir / "eval" / "finetuned")
    retain_path = retain_model(cfg, source, logger)
    if retain_path is not None:
        # TOFU's metrics of the retain model come from its cached logs; the other axes are measured here.
        results["retain"] = tofu_eval.aggregate(retain, reference) if retain is not None else {}
        with timed("evaluation of the retain model"):
            load = lambda: load_lm(cfg, source, retain_path)  # noqa: E731
            results["retain"].update(axes.measure(cfg, axis_data, "retain", retain_path, load, target_lm))
    for method in methods:
        with timed(f"unlearning with {method} and evaluation"):
            lm = unlearn(cfg, method, source, target, selected, run_dir / method, logger)
            key = unlearned_key(cfg, method, target)
            results[method] = run(method, key, lambda lm=lm: lm, out_dir=run_dir / "eval" / method)
    axes.add_privleak(results, cfg.mia.privleak_attack)
    logger.finish()
    write_json(run_dir / "tofu_metrics.json", results)
    return {**metrics, **axes.flat(results)}


def eval(cfg: MeowConfig, run_dir: Path) -> dict[str, float]:  # noqa: A001 - the command's name
    """TOFU metrics of eval.model_path (default: the fine-tuned target) against the retain reference."""
    source = source_of(cfg)
    axis_data = axes.inputs(cfg, source)
    path = cfg.eval.model_path or finetuned_path(cfg, source, "target")
    reference = reference_forget_log(cfg, retain_logs(cfg, source)) if "tofu" in cfg.eval.axes else None
    load = lambda: load_lm(cfg, source, path)  # noqa: E731
    featurizer = lambda: load_lm(cfg, source, finetuned_path(cfg, source, "target"))  # noqa: E731
    result = evaluate_model(cfg, source, "model", path, load, reference, axis_data, run_dir / "eval", featurizer)
    print("\n" + axes.table(axes.flat({str(path): result})) + "\n")
    return result


def score_logs(cfg: MeowConfig, run_dir: Path) -> dict[str, float]:
    """Model utility, and forget quality against eval.retain_log, of TOFU logs alone (eval.run_logs); no model."""
    result = tofu_eval.score_logs(cfg.eval.run_logs, cfg.eval.retain_log, cfg.eval.max_rows)
    if not cfg.eval.retain_log:
        print("no eval.retain_log given: model utility only, no forget quality")
    print("\n" + tofu_eval.table(tofu_eval.flat({cfg.eval.run_logs: result})) + "\n")
    return result


def check_inputs(cfg: MeowConfig) -> None:
    """The data a command reads, loaded and checked before any model is built or trained (common.cli.Command.inputs):
    every TOFU split it needs (a missing split file or field is one line), memo.path and invert.path against the
    forget split, and eval.retain_log."""
    d, f, e = cfg.data, cfg.finetune, cfg.eval
    source = source_of(cfg)
    command = cfg.command
    # Which models the command fine-tunes first: the target (eval: unless eval.model_path is given), the retain model
    # (train, eval: unless eval.retain_log stands for it).
    target = f.target is None and (command in ("finetune", "memo", "train") or (command == "eval" and not e.model_path))
    retain = f.retain is None and (command == "finetune" or (command in ("train", "eval") and not e.retain_log))
    splits = []
    if target:
        splits.append(d.full_split)
    if retain or command == "train":  # unlearning trains on the retain split too
        splits.append(d.retain_split)
    if target or retain:
        splits += d.extra_finetune_splits
    if command in ("invert", "memo", "train"):
        splits.append(d.forget_split)
    if command == "finetune":
        splits.append(f"{d.forget_split}_perturbed")
    for split in dict.fromkeys(splits):
        source.load(split)
    if command in ("train", "eval"):
        axes.inputs(cfg, source)
        eval_splits(cfg, source)
        if e.retain_log:
            reference_forget_log(cfg, None)
    if command == "train" and cfg.memo.path:
        given_scored_rows(cfg, source)
    elif command in ("invert", "memo", "train") and cfg.invert.path:  # read as given (nothing is generated)
        inverted_rows(cfg, source)

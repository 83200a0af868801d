"""MEOW's stages: fine-tune → invert → MEMO → select → unlearn → evaluate.

Each stage's output lives under `cache_dir/meow/<stage>/`, keyed by every setting and input that made it
(common.stages), so `train` alone runs the whole pipeline, reruns skip what is done, and a changed setting never
reuses a stale output. Under torchrun every rank runs this code: the main process writes, the others wait.
"""

from __future__ import annotations

import json
import random
import shutil
from functools import partial
from pathlib import Path

from common.dist import main_then_wait
from common.errors import UserError
from common.io import read_records, write_json
from common.lm import Encoded, collate, encode_qa
from common.loggers import Logger, Prefixed
from common.models import (
    TINY_MODELS,
    attach_lora,
    load_causal_lm,
    resolve_model_path,
    save_model,
    without_adapters,
)
from common.registry import get
from common.seeding import seeded
from common.stages import run_stage, shaping_settings, stage_path
from common.trainer import Task, fit
from methods.meow import axes, tofu_eval
from methods.meow.config import MeowConfig
from methods.meow.data import IDK_ANSWERS, DataSource, corpus, data_source
from methods.meow.invert import check_matches_forget, invert_rows
from methods.meow.losses import mean_nll
from methods.meow.memo import SUFFIX, answer_keys, score_rows, select_top_k


def source_of(cfg: MeowConfig) -> DataSource:
    return data_source(cfg.data, cfg.seed, cfg.cache_dir)


def data_identity(cfg: MeowConfig) -> dict:
    """What determines the data a model is trained on (not which forget split is later unlearned)."""
    d = cfg.data
    return {
        "source": d.source,
        "path": d.path,
        "sizes": [d.n_authors, d.qa_per_author, d.n_general],
        "seed": cfg.seed,
        "extra": d.extra_finetune_splits,
        "max_length": d.max_length,
    }


def load_lm(cfg: MeowConfig, source: DataSource, path: str | Path | None = None):
    """(model, tokenizer) of `path`, or of cfg.model when None."""
    # A tiny model's tokenizer is trained on this dataset's own text (only used when the model is first built).
    if path is None and cfg.model.name_or_path in TINY_MODELS:
        text = corpus(source)
        main_then_wait(lambda: resolve_model_path(cfg.model, cfg.cache_dir, text))  # built once, not per rank
        return load_causal_lm(cfg.model, cfg.cache_dir, corpus=text)
    return load_causal_lm(cfg.model, cfg.cache_dir, path=path)


def encode(cfg: MeowConfig, tokenizer, question: str, answer: str) -> Encoded:
    return encode_qa(tokenizer, cfg.model.family, question, answer, cfg.data.max_length)


# ---------------------------------------------------------------- fine-tuning (target and retain models)


def _sft_loss(model, batch):
    return mean_nll(model, batch), {}


def finetuned_path(cfg: MeowConfig, source: DataSource, which: str, logger: Logger | None = None) -> str:
    """The fine-tuned target (`which`='target', trained on full) or retain model (on retain_split); trained once."""
    given = cfg.finetune.target if which == "target" else cfg.finetune.retain
    if given:
        return given
    split = cfg.data.full_split if which == "target" else cfg.data.retain_split
    m = cfg.model
    base = [m.name_or_path, m.family, m.dtype, m.revision]  # LoRA settings do not matter: fine-tuning is full
    path = stage_path(
        cfg.cache_dir, "meow/models", base, data_identity(cfg), cfg.finetune.trainer, split, label=f"{which}-{split}"
    )
    work = path.with_name(path.name + ".work")  # trainer checkpoints: a killed fine-tune resumes from here

    def train():
        model, tokenizer = load_lm(cfg, source)
        rows = source.load(split) + [r for s in cfg.data.extra_finetune_splits for r in source.load(s)]
        items = [encode(cfg, tokenizer, r["question"], r["answer"]) for r in rows]
        task = Task(
            model=model, train_data=items, collate=partial(collate, pad_id=tokenizer.pad_token_id), loss=_sft_loss
        )
        print(f"fine-tuning the {which} model on {split} ({len(items)} examples)", flush=True)
        # Drawn from the seed the stage's key holds (the trainer's), not from what the run did before.
        with seeded(cfg.finetune.trainer.seed, f"meow/finetune/{which}"):
            result = fit(task, cfg.finetune.trainer, work, Prefixed(logger, f"finetune_{which}") if logger else None)
        return result, tokenizer

    def write(tmp: Path, trained) -> None:
        result, tokenizer = trained
        save_model(result.model, tokenizer, tmp)
        shutil.rmtree(work, ignore_errors=True)  # the saved model replaces the trainer's checkpoints

    return str(run_stage(f"{which} model", path, write, compute=train))


# ---------------------------------------------------------------- inverted facts and MEMO


def inverted_rows(cfg: MeowConfig, source: DataSource) -> tuple[list[dict], Path]:
    """The inverted facts of the forget split: invert.path, or generated (resumed row by row) into the cache."""
    forget = source.load(cfg.data.forget_split)
    if cfg.invert.path:
        path = Path(cfg.invert.path)
    else:
        # Not run_stage: the file grows row by row, so that a failed or killed inversion resumes where it stopped.
        path = stage_path(
            cfg.cache_dir, "meow/inverted", data_identity(cfg), cfg.invert, label=cfg.data.forget_split, suffix=".json"
        )
        make = get("meow.inverter", cfg.invert.generator)
        main_then_wait(lambda: invert_rows(forget, make(cfg.invert, seed=cfg.seed, cache_dir=cfg.cache_dir), path))
    rows = read_records(path, ("question", "undesired_answer"))
    check_matches_forget(rows, forget, path)
    return rows, path


def given_scored_rows(cfg: MeowConfig, source: DataSource) -> tuple[list[dict], Path]:
    """An already scored file (memo.path, e.g. the MEOW release's), checked against the forget split."""
    path = Path(cfg.memo.path)
    rows = read_records(path, ("question",))
    check_matches_forget(rows, source.load(cfg.data.forget_split), path)
    return rows, path


def memo_path(cfg: MeowConfig, target: str, inverted: list[dict]) -> Path:
    return stage_path(
        cfg.cache_dir, "meow/memo", target, inverted, cfg.memo, label=cfg.data.forget_split, suffix=".json"
    )


def score(cfg: MeowConfig, source: DataSource, target: str, rows: list[dict]) -> list[dict]:
    """The rows with MEMO of every answer under the target model."""
    model, tokenizer = load_lm(cfg, source, target)
    return score_rows(model.eval(), tokenizer, rows, cfg.memo)


def scored_rows(cfg: MeowConfig, source: DataSource, target: str, inverted: list[dict]) -> tuple[list[dict], Path]:
    """Inverted facts with MEMO of every answer under the target model (a stage), and the file holding them."""
    path = run_stage(
        "MEMO",
        memo_path(cfg, target, inverted),
        write_json,
        compute=lambda: score(cfg, source, target, inverted),  # every process scores its share
    )
    return json.loads(path.read_text()), path


def memo_histogram(rows: list[dict], path: Path) -> dict[str, float]:
    """PNG of MEMO for true against inverted answers; returns their means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    true = [r["undesired_answer" + SUFFIX] for r in rows if "undesired_answer" + SUFFIX in r]
    inv = [r[k + SUFFIX] for r in rows for k in answer_keys(r) if k != "undesired_answer" and k + SUFFIX in r]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bins = [i / 20 for i in range(21)]
    ax.hist(inv, bins=bins, alpha=0.6, label=f"inverted (n={len(inv)})")
    ax.hist(true, bins=bins, alpha=0.6, label=f"true (n={len(true)})")
    ax.set_xlabel("MEMO (ROUGE-1 precision)")
    ax.set_ylabel("answers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {"memo/true_mean": mean(true), "memo/inverted_mean": mean(inv)}


def selection(cfg: MeowConfig, rows: list[dict], path: str | Path) -> dict[str, list[str]]:
    """Question -> the inverted answers MEOW trains on (top-k by MEMO, or a random choice); `path` holds the rows."""
    rng = random.Random(cfg.seed)
    out = {}
    for pos, r in enumerate(rows, start=1):
        try:
            keys = select_top_k(r, cfg.select.top_k, cfg.select.order, rng)
        except KeyError as e:
            raise UserError(
                f"{path}: record {pos} (question {r['question']!r}): {e.args[0]} "
                "(run the memo command, or give memo.path a scored file)"
            ) from None
        out[r["question"]] = [r[k] for k in keys]
    return out


# ---------------------------------------------------------------- unlearning


def build_items(
    method: str, forget: list[dict], retain: list[dict], selected: dict[str, list[str]] | None, encode, seed: int
) -> list[dict[str, Encoded]]:
    """Training items for `method`: one per forget row, or one per selected inverted fact for the MEOW family.

    Each item pairs its forget question with a retain example and a refusal drawn by a seeded generator (TOFU draws a
    random retain example per access; a fixed draw keeps resumed runs exact).
    """
    rng = random.Random(seed)
    needs = get("meow.loss", method).needs
    items = []
    for row in forget:
        targets = selected[row["question"]] if "inverted" in needs else [None]
        for inverted in targets:
            item: dict[str, Encoded] = {}
            if "forget" in needs:
                item["forget"] = encode(row["question"], row["answer"])
            if "inverted" in needs:
                item["inverted"] = encode(row["question"], inverted)
            if "idk" in needs:
                item["idk"] = encode(row["question"], rng.choice(IDK_ANSWERS))
            if "retain" in needs:
                r = retain[rng.randrange(len(retain))]
                item["retain"] = encode(r["question"], r["answer"])
            items.append(item)
    return items


def collate_items(items: list[dict[str, Encoded]], pad_id: int) -> dict[str, dict]:
    return {key: collate([it[key] for it in items], pad_id) for key in items[0]}


def unlearn(
    cfg: MeowConfig,
    method: str,
    source: DataSource,
    target: str,
    selected: dict | None,
    out_dir: Path,
    logger: Logger | None = None,
):
    """Unlearn the forget split from the target with `method`; returns (model, tokenizer)."""
    objective = get("meow.loss", method)
    model, tokenizer = load_lm(cfg, source, target)
    lora = cfg.model.lora.r > 0
    # Under LoRA the reference is the same weights with the adapters off, not a second copy of a 7B model.
    ref = load_lm(cfg, source, target)[0] if objective.reference and not lora else None
    model = attach_lora(model, cfg.model, seed=cfg.seed, label=f"meow/unlearn/{method}/lora")
    if objective.reference and lora:
        ref = without_adapters(model)
    forget, retain = source.load(cfg.data.forget_split), source.load(cfg.data.retain_split)
    items = build_items(method, forget, retain, selected, partial(encode, cfg, tokenizer), cfg.seed)

    def loss(m, batch):
        return objective(m, ref, batch, cfg.loss), {}

    task = Task(
        model=model,
        train_data=items,
        collate=partial(collate_items, pad_id=tokenizer.pad_token_id),
        loss=loss,
        frozen=[ref] if ref is not None and not lora else [],
    )
    print(f"unlearning with {method} ({len(items)} items)", flush=True)
    with seeded(cfg.seed, f"meow/unlearn/{method}"):  # every method's run depends on the seed alone
        result = fit(task, cfg.trainer, out_dir / "train", Prefixed(logger, method) if logger else None)

    def publish() -> None:
        shutil.rmtree(out_dir / "train" / "checkpoints", ignore_errors=True)  # the saved model replaces them
        if cfg.save_models:
            save_model(result.model, tokenizer, out_dir / "model")

    main_then_wait(publish)
    return result.model, tokenizer


# ---------------------------------------------------------------- evaluation


def eval_splits(cfg: MeowConfig, source: DataSource) -> dict[str, list[dict]]:
    splits = {"retain": source.load("retain_perturbed"), "forget": source.load(f"{cfg.data.forget_split}_perturbed")}
    return {**splits, **{name: source.load(f"{name}_perturbed") for name in tofu_eval.GENERAL_SETS}}


def evaluate(cfg: MeowConfig, source: DataSource, model, tokenizer, out_dir: Path | None = None) -> dict[str, dict]:
    return tofu_eval.evaluate(
        model,
        tokenizer,
        eval_splits(cfg, source),
        cfg.eval,
        family=cfg.model.family,
        max_length=cfg.data.max_length,
        out_dir=out_dir,
    )


def retain_logs(cfg: MeowConfig, source: DataSource, logger: Logger | None = None) -> dict[str, dict] | None:
    """Our retain model's TOFU logs (a stage), or None when a TOFU-format retain log file is configured."""
    if cfg.eval.retain_log:
        return None
    model_path = finetuned_path(cfg, source, "retain", logger)
    path = stage_path(
        cfg.cache_dir,
        "meow/eval",
        model_path,
        cfg.data.forget_split,
        cfg.eval,
        cfg.model.family,
        cfg.data.max_length,
        tofu_eval.READ_KEYS,  # the key names read back: logs cached under other names are not reused
        label="retain",
    )

    def compute() -> dict[str, dict]:  # every process evaluates its share
        model, tokenizer = load_lm(cfg, source, model_path)
        return evaluate(cfg, source, model, tokenizer)

    return tofu_eval.load_logs(
        run_stage("retain model's evaluation", path, lambda tmp, logs: tofu_eval.write_logs(logs, tmp), compute)
    )


def reference_forget_log(cfg: MeowConfig, retain: dict[str, dict] | None) -> dict:
    """The retain model's forget-set log that forget quality compares against."""
    if cfg.eval.retain_log:
        return tofu_eval.load_forget_log(cfg.eval.retain_log, cfg.eval.max_rows)
    assert retain is not None
    return retain["forget"]


# ---------------------------------------------------------------- every axis of one model


def unlearned_key(cfg: MeowConfig, method: str, target: str) -> list:
    """What identifies an unlearned model: its target, method, the run's settings that shape training, the trainer's."""
    return [target, method, shaping_settings(cfg), cfg.trainer, cfg.seed, cfg.invert.path, cfg.memo.path]


def retain_model(cfg: MeowConfig, source: DataSource, logger: Logger | None = None) -> str | None:
    """The retain model the axes measure (privleak's reference): ours, or finetune.retain; None when a TOFU retain
    log stands in for it and no retain model is given."""
    if cfg.eval.retain_log and not cfg.finetune.retain:
        return None
    return finetuned_path(cfg, source, "retain", logger)


def evaluate_model(
    cfg: MeowConfig,
    source: DataSource,
    name: str,
    key,
    load,
    reference: dict | None,
    axis_data: dict,
    out_dir: Path | None = None,
    featurizer=None,
) -> dict[str, float]:
    """Every axis of eval.axes for one model: TOFU's metrics (its logs into out_dir) against `reference`, then the
    cached NLU / NLG / robustness stages (methods/meow/axes.py). `load` gives (model, tokenizer) when needed."""
    loaded: list = []

    def model():
        if not loaded:
            loaded.extend(load())
        return loaded

    out: dict[str, float] = {}
    if "tofu" in cfg.eval.axes:
        out.update(tofu_eval.aggregate(evaluate(cfg, source, *model(), out_dir), reference))
    out.update(axes.measure(cfg, axis_data, name, key, model, featurizer))
    return out

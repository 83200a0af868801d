"""The MEOW pipeline as commands: finetune → invert → memo → train (select + unlearn + evaluate), and eval.

Every stage caches its artefact under `cache_dir/meow/` keyed by the config that produced it, so `train` alone runs
the whole pipeline and reruns skip what is done; each stage is also a command of its own for cluster use.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from common.dist import is_main_process
from common.errors import UserError
from common.io import read_records, write_json
from common.lm import Encoded, collate, encode_qa
from common.loggers import make_logger
from common.models import TINY_MODELS, attach_lora, load_causal_lm, resolve_model_path, save_model
from common.results import markdown_table
from common.shard import merge_shards, shard_items, shard_path
from common.trainer import Task, fit
from methods.meow import tofu_eval
from methods.meow.data import IDK_ANSWERS, DataSource, SyntheticSpec, corpus, data_source
from methods.meow.invert import InvertSettings, check_matches_forget, invert_rows, make_generator
from methods.meow.losses import LOSSES, NEEDS, USES_REFERENCE, LossSettings, mean_nll
from methods.meow.memo import SUFFIX, MemoSettings, answer_keys, score_rows, select_top_k

GENERAL_SETS = {"real_authors": "real_authors_perturbed", "world_facts": "world_facts_perturbed"}


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _key(*parts: Any) -> str:
    return hashlib.sha1(json.dumps([_plain(p) for p in parts], sort_keys=True, default=str).encode()).hexdigest()[:12]


def _cache(cfg: DictConfig, *parts: str) -> Path:
    return Path(cfg.cache_dir) / "meow" / Path(*parts)


def source_of(cfg: DictConfig) -> DataSource:
    spec = SyntheticSpec(cfg.data.n_authors, cfg.data.qa_per_author, cfg.data.n_general, cfg.seed)
    return data_source(cfg.data.source, cfg.data.path, spec, cfg.cache_dir)


def _data_identity(cfg: DictConfig) -> dict:
    """What determines the data a model is trained on (not which forget split is later unlearned)."""
    d = cfg.data
    return {"source": d.source, "path": d.path, "sizes": [d.n_authors, d.qa_per_author, d.n_general], "seed": cfg.seed,
            "extra": d.extra_finetune_splits, "max_length": d.max_length}


def load_lm(cfg: DictConfig, source: DataSource, path: str | Path | None = None):
    # A tiny model's tokenizer is trained on this dataset's own text (only used when the model is first built).
    if path is None and cfg.model.name_or_path in TINY_MODELS:
        text = corpus(source)
        _main_then_wait(lambda: resolve_model_path(cfg.model, cfg.cache_dir, text))  # built once, not per rank
        return load_causal_lm(cfg.model, cfg.cache_dir, corpus=text)
    return load_causal_lm(cfg.model, cfg.cache_dir, path=path)


def _encode(cfg: DictConfig, tokenizer, question: str, answer: str) -> Encoded:
    return encode_qa(tokenizer, cfg.model.family, question, answer, cfg.data.max_length)


@contextlib.contextmanager
def _timed(label: str):
    """Print how long a pipeline stage took (cached stages take ~0 s)."""
    start = time.perf_counter()
    yield
    print(f"[{time.perf_counter() - start:6.1f} s] {label}", flush=True)


def _main_then_wait(write) -> None:
    """Under torchrun every rank runs the pipeline: one writes a shared file, the others wait until it exists."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # the same process group the trainer joins
    if state.is_main_process:
        write()
    state.wait_for_everyone()


class _Prefixed:
    """Several fits share one metrics file; each writes under its own name."""

    def __init__(self, inner, prefix: str):
        self.inner, self.prefix = inner, prefix

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.inner.log({f"{self.prefix}/{k}": v for k, v in metrics.items()}, step)

    def finish(self) -> None:
        pass


# ---------------------------------------------------------------- fine-tuning (target and retain models)

def _sft_loss(model, batch):
    return mean_nll(model, batch), {}


def finetuned_path(cfg: DictConfig, source: DataSource, which: str, logger=None) -> str:
    """The fine-tuned target (`which`='target', trained on full) or retain model (on retain_split); trained once."""
    given = cfg.finetune.target if which == "target" else cfg.finetune.retain
    if given:
        return given
    split = cfg.data.full_split if which == "target" else cfg.data.retain_split
    base = {k: cfg.model[k] for k in ("name_or_path", "family", "dtype", "revision")}  # LoRA settings do not matter
    path = _cache(cfg, "models", f"{which}-{split}-{_key(base, _data_identity(cfg), cfg.finetune.trainer, split)}")
    if (path / "config.json").is_file():
        return str(path)
    # Full fine-tuning, as TOFU made its targets; model.lora applies to unlearning only.
    model, tokenizer = load_lm(cfg, source)
    rows = source.load(split) + [r for s in cfg.data.extra_finetune_splits for r in source.load(s)]
    items = [_encode(cfg, tokenizer, r["question"], r["answer"]) for r in rows]
    work = path.with_name(path.name + ".work")  # trainer checkpoints: a killed fine-tune resumes from here
    task = Task(model=model, train_data=items, collate=partial(collate, pad_id=tokenizer.pad_token_id), loss=_sft_loss)
    print(f"fine-tuning the {which} model on {split} ({len(items)} examples)", flush=True)
    result = fit(task, cfg.finetune.trainer, work, _Prefixed(logger, f"finetune_{which}") if logger else None)

    def publish() -> None:
        save_model(result.model, tokenizer, path)
        shutil.rmtree(work, ignore_errors=True)

    _main_then_wait(publish)
    return str(path)


# ---------------------------------------------------------------- inverted facts and MEMO

def inverted_rows(cfg: DictConfig, source: DataSource) -> tuple[list[dict], Path]:
    forget = source.load(cfg.data.forget_split)
    if cfg.invert.path:
        path = Path(cfg.invert.path)
        rows = read_records(path, ("question", "undesired_answer"))
    else:
        settings = InvertSettings(**{k: v for k, v in _plain(cfg.invert).items() if k != "path"}, seed=cfg.seed)
        path = _cache(cfg, "inverted", f"{cfg.data.forget_split}-{_key(_data_identity(cfg), settings.__dict__)}.json")
        rows = invert_rows(forget, make_generator(settings, cfg.cache_dir), path)
    check_matches_forget(rows, forget, path)
    return rows, path


def _memo_settings(cfg: DictConfig) -> MemoSettings:
    return MemoSettings(cfg.memo.mode, cfg.memo.stride, cfg.memo.max_new_tokens, cfg.memo.batch_size)


def _memo_cache(cfg: DictConfig, target: str, inverted: list[dict]) -> Path:
    return _cache(cfg, "memo", f"{cfg.data.forget_split}-{_key(target, inverted, _memo_settings(cfg).__dict__)}.json")


def given_scored_rows(cfg: DictConfig, source: DataSource) -> list[dict]:
    """An already scored file (memo.path, e.g. the MEOW release's), checked against the forget split."""
    rows = read_records(cfg.memo.path, ("question",))
    check_matches_forget(rows, source.load(cfg.data.forget_split), cfg.memo.path)
    return rows


def scored_rows(cfg: DictConfig, source: DataSource, target: str, inverted: list[dict]) -> list[dict]:
    """Inverted facts with MEMO of every answer under the target model (computed once, cached)."""
    path = _memo_cache(cfg, target, inverted)
    if path.is_file():
        return json.loads(path.read_text())
    model, tokenizer = load_lm(cfg, source, target)
    model.eval()
    rows = score_rows(model, tokenizer, inverted, _memo_settings(cfg))
    write_json(path, rows)
    return rows


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


# ---------------------------------------------------------------- unlearning

def build_items(method: str, forget: list[dict], retain: list[dict], selected: dict[str, list[str]] | None,
                encode, seed: int) -> list[dict[str, Encoded]]:
    """Training items for `method`: one per forget row, or one per selected inverted fact for the MEOW family.

    Each item pairs its forget question with a retain example and a refusal drawn by a seeded generator (TOFU draws a
    random retain example per access; a fixed draw keeps resumed runs exact).
    """
    rng = random.Random(seed)
    needs = NEEDS[method]
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


def selection(cfg: DictConfig, rows: list[dict]) -> dict[str, list[str]]:
    """Question -> the inverted answers MEOW trains on (top-k by MEMO, or a seeded random choice)."""
    rng = random.Random(cfg.seed)
    out = {}
    for r in rows:
        try:
            keys = select_top_k(r, cfg.select.top_k, cfg.select.order, rng)
        except (KeyError, ValueError) as e:
            raise UserError(f"select: {e}") from None
        out[r["question"]] = [r[k] for k in keys]
    return out


def unlearn(cfg: DictConfig, method: str, source: DataSource, target: str, selected: dict | None, out_dir: Path, logger=None):
    if method not in LOSSES:
        raise UserError(f"method: unknown '{method}'; valid: {', '.join(LOSSES)}")
    model, tokenizer = load_lm(cfg, source, target)
    ref = load_lm(cfg, source, target)[0] if method in USES_REFERENCE else None
    model = attach_lora(model, cfg.model)
    forget, retain = source.load(cfg.data.forget_split), source.load(cfg.data.retain_split)
    items = build_items(method, forget, retain, selected, partial(_encode, cfg, tokenizer), cfg.seed)
    settings = LossSettings(**_plain(cfg.loss))
    loss_fn = LOSSES[method]

    def loss(m, batch):
        return loss_fn(m, ref, batch, settings), {}

    task = Task(model=model, train_data=items, collate=partial(collate_items, pad_id=tokenizer.pad_token_id),
                loss=loss, frozen=[ref] if ref is not None else [])
    print(f"unlearning with {method} ({len(items)} items)", flush=True)
    result = fit(task, cfg.trainer, out_dir / "train", _Prefixed(logger, method) if logger else None)

    def publish() -> None:
        shutil.rmtree(out_dir / "train" / "checkpoints", ignore_errors=True)  # the saved model replaces them
        if cfg.save_models:
            save_model(result.model, tokenizer, out_dir / "model")

    _main_then_wait(publish)
    return result.model, tokenizer


# ---------------------------------------------------------------- evaluation

def _eval_settings(cfg: DictConfig) -> tofu_eval.EvalSettings:
    e = cfg.eval
    return tofu_eval.EvalSettings(cfg.model.family, cfg.data.max_length, e.max_new_tokens, e.batch_size, e.max_rows)


def eval_splits(cfg: DictConfig, source: DataSource) -> dict[str, list[dict]]:
    splits = {"retain": source.load("retain_perturbed"), "forget": source.load(f"{cfg.data.forget_split}_perturbed")}
    return {**splits, **{name: source.load(split) for name, split in GENERAL_SETS.items()}}


def evaluate(cfg: DictConfig, source: DataSource, model, tokenizer, out_dir: Path | None = None) -> dict[str, dict]:
    return tofu_eval.evaluate(model, tokenizer, eval_splits(cfg, source), _eval_settings(cfg), out_dir)


def retain_logs(cfg: DictConfig, source: DataSource, logger=None) -> dict[str, dict] | None:
    """Our retain model's TOFU logs (cached), or None when a TOFU-format retain log file is configured."""
    if cfg.eval.retain_log:
        return None
    path = Path(finetuned_path(cfg, source, "retain", logger))
    out = _cache(cfg, "eval", f"retain-{_key(str(path), cfg.data.forget_split, _eval_settings(cfg).__dict__)}")
    if (out / "eval_log_aggregated.json").is_file():
        agg = json.loads((out / "eval_log_aggregated.json").read_text())
        return {name: agg[file] for name, (file, _) in tofu_eval.EVAL_SETS.items()}
    model, tokenizer = load_lm(cfg, source, path)
    return evaluate(cfg, source, model, tokenizer, out)


def reference_forget_log(cfg: DictConfig, retain: dict[str, dict] | None) -> dict:
    if cfg.eval.retain_log:
        return tofu_eval.load_forget_log(cfg.eval.retain_log, cfg.eval.max_rows)
    assert retain is not None
    return retain["forget"]


KEY_METRICS = ("forget_quality", "model_utility", "forget/rouge", "retain/rouge", "forget/truth_ratio", "forget/prob")


def _table(results: dict[str, dict[str, float]]) -> str:
    header = ["model", "FQ", "MU", "forget ROUGE", "retain ROUGE", "forget TR", "forget prob"]
    return markdown_table(header, [[name, *(m.get(k, float("nan")) for k in KEY_METRICS)] for name, m in results.items()])


def _flat(results: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{name}/{k.replace('/', '_')}": m[k] for name, m in results.items() for k in KEY_METRICS if k in m}


# ---------------------------------------------------------------- commands

def finetune(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Fine-tune the target model on the full split and the retain model on the retain split (both cached)."""
    source = source_of(cfg)
    logger = make_logger(cfg.logger, run_dir)
    paths = {which: finetuned_path(cfg, source, which, logger) for which in ("target", "retain")}
    settings = _eval_settings(cfg)
    forget = source.load(f"{cfg.data.forget_split}_perturbed")
    metrics = {}
    for which, path in paths.items():
        print(f"{which} model: {path}")
        model, tokenizer = load_lm(cfg, source, path)
        log = tofu_eval.eval_log(model.eval(), tokenizer, forget, "paraphrased_answer", settings)
        metrics[f"{which}/forget_rouge"] = tofu_eval.set_metrics("forget", log)["rouge"]
    write_json(run_dir / "models.json", paths)
    return metrics


def invert(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Write (or resume) the inverted facts for the forget split."""
    rows, path = inverted_rows(cfg, source_of(cfg))
    write_json(run_dir / "inverted.json", rows)
    print(f"inverted facts: {path}")
    counts = [len(answer_keys(r)) - 1 for r in rows]
    return {"rows": float(len(rows)), "answers_per_row": sum(counts) / len(counts)}


def memo(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """MEMO of every true and inverted answer under the target model; shard=i num_shards=n splits the rows."""
    source = source_of(cfg)
    rows, _ = inverted_rows(cfg, source)
    target = finetuned_path(cfg, source, "target")
    final = _memo_cache(cfg, target, rows)
    if not final.is_file():
        part = shard_items(rows, cfg.shard, cfg.num_shards)
        model, tokenizer = load_lm(cfg, source, target)
        write_json(shard_path(final, cfg.shard, cfg.num_shards), score_rows(model.eval(), tokenizer, part, _memo_settings(cfg)))
        if cfg.num_shards > 1:
            done = [shard_path(final, i, cfg.num_shards).is_file() for i in range(cfg.num_shards)]
            if not all(done):
                print(f"shard {cfg.shard} of {cfg.num_shards} written; the last shard to finish merges them")
                return {"rows": float(len(part))}
            write_json(final, merge_shards(final, cfg.num_shards))
    scored = json.loads(final.read_text())
    write_json(run_dir / "memo.json", scored)
    print(f"MEMO scores: {final}")
    return {"rows": float(len(scored)), **memo_histogram(scored, run_dir / "memo_hist.png")}


def train(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """MEOW end to end (and `compare` baselines): fine-tune, invert, MEMO, select, unlearn, evaluate."""
    methods = [cfg.method, *[m for m in cfg.compare if m != cfg.method]]
    unknown = [m for m in methods if m not in LOSSES]
    if unknown:
        raise UserError(f"method: unknown {unknown}; valid: {', '.join(LOSSES)}")
    source = source_of(cfg)
    logger = make_logger(cfg.logger, run_dir, _plain(cfg))
    uses_meow = any(m.startswith("meow") for m in methods)
    # Input checks come first, so a mismatched inverted-facts file stops the run before anything is trained.
    with _timed("inverted facts"):
        given = given_scored_rows(cfg, source) if uses_meow and cfg.memo.path else None
        inverted = inverted_rows(cfg, source)[0] if uses_meow and given is None else None
    with _timed("retain model and its evaluation"):
        retain = retain_logs(cfg, source, logger)
        reference = reference_forget_log(cfg, retain)
    with _timed("fine-tuned target model"):
        target = finetuned_path(cfg, source, "target", logger)
    metrics: dict[str, float] = {}
    selected = None
    if uses_meow:
        with _timed("MEMO"):
            scored = given or scored_rows(cfg, source, target, inverted or [])
        write_json(run_dir / "memo.json", scored)
        metrics.update(memo_histogram(scored, run_dir / "memo_hist.png"))
        selected = selection(cfg, scored)
        write_json(run_dir / "selected.json", selected)

    results: dict[str, dict[str, float]] = {}
    with _timed("evaluation of the fine-tuned model"):
        model, tokenizer = load_lm(cfg, source, target)
        logs = evaluate(cfg, source, model, tokenizer, run_dir / "eval" / "finetuned")
        results["finetuned"] = tofu_eval.aggregate(logs, reference)
    if retain is not None:
        results["retain"] = tofu_eval.aggregate(retain, reference)
    for method in methods:
        with _timed(f"unlearning with {method} and evaluation"):
            model, tokenizer = unlearn(cfg, method, source, target, selected, run_dir / method, logger)
            logs = evaluate(cfg, source, model, tokenizer, run_dir / "eval" / method)
            results[method] = tofu_eval.aggregate(logs, reference)
    logger.finish()
    write_json(run_dir / "tofu_metrics.json", results)
    table = _table(results)
    if is_main_process():
        (run_dir / "tofu_table.md").write_text(table + "\n")
        print("\n" + table + "\n")
    return {**metrics, **_flat(results)}


def eval(cfg: DictConfig, run_dir: Path) -> dict[str, float]:  # noqa: A001 - the command's name
    """TOFU metrics of eval.model_path (default: the fine-tuned target) against the retain reference."""
    source = source_of(cfg)
    path = cfg.eval.model_path or finetuned_path(cfg, source, "target")
    reference = reference_forget_log(cfg, retain_logs(cfg, source))
    model, tokenizer = load_lm(cfg, source, path)
    result = tofu_eval.aggregate(evaluate(cfg, source, model, tokenizer, run_dir / "eval"), reference)
    print("\n" + _table({str(path): result}) + "\n")
    return result

"""MEOW's axes beside TOFU: NLU (nlu.py), NLG (nlg.py) and robustness (mia.py), each a cached stage per model.

`measure(cfg, source, name, key, load)` runs every axis of `eval.axes` but tofu for one model: each axis's metrics
live under `cache_dir/meow/<axis>/<name>-<key>.json`, keyed by the model's identity, the axis's settings and its data,
so a rerun loads them without loading the model, and every process of a torchrun job computes its share of the items
(common.dist.shard_map inside each axis). `table` prints one row per model in the paper's shape.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from common.io import write_json
from common.results import markdown_table
from common.stages import run_stage, stage_path
from methods.meow import mia, nlg, nlu, tofu_eval
from methods.meow.config import MeowConfig
from methods.meow.data import DataSource

# Table columns after TOFU's: (header, flat metric name).
COLUMNS = {
    "ARC-C": "nlu/arc_challenge/meow_acc",
    "ARC-E": "nlu/arc_easy/meow_acc",
    "PIQA": "nlu/piqa/meow_acc",
    "MAUVE": "nlg/mauve",
    "BLEU": "nlg/bleu",
    "Rep-3": "nlg/rep3",
    "MIA AUC": "mia/min_k_auc",
    "privleak": "mia/privleak",
    "extraction ROUGE": "extraction/rougeL_recall",
}


def nlu_dir(cfg: MeowConfig) -> Path | None:
    """Where the NLU tasks' files are: nlu.path, the generated sets (made once into the cache), or None (hub)."""
    if cfg.nlu.source == "local":
        return Path(str(cfg.nlu.path))
    if cfg.nlu.source == "hf":
        return None
    path = stage_path(cfg.cache_dir, "meow/synthetic_nlu", cfg.seed)
    return run_stage("synthetic NLU sets", path, lambda tmp: nlu.synthetic_tasks(tmp, cfg.seed))


def nlg_texts(cfg: MeowConfig, source: DataSource) -> list[str]:
    """The sampled corpus: from nlg.files, the hub, or generated files in the cc_news / wikitext layouts."""
    c = cfg.nlg
    if c.source == "synthetic":
        files = synthetic_corpus(cfg, source)
    else:
        files = c.files if c.source == "local" else None
    return nlg.sample_texts(nlg.read_texts(files), c.n_texts, c.min_chars, c.max_chars, c.sample_seed)


def synthetic_corpus(cfg: MeowConfig, source: DataSource) -> list[str]:
    """News-like and wiki-like files of the synthetic authors' answers, joined into 100-200 character texts (text
    the tiny model has learned to continue), in cc_news's (title, text, domain, ...) and wikitext's (text) layouts."""
    from methods.meow.pipeline import data_identity

    path = stage_path(cfg.cache_dir, "meow/synthetic_nlg", data_identity(cfg))

    def write(tmp: Path) -> None:
        texts, current = [], ""
        for row in source.load(cfg.data.full_split):
            current = f"{current} {row['answer']}".strip()
            if len(current) > 110:
                texts.append(current[:199])
                current = ""
        news = [{"title": t.split(".")[0], "text": t, "domain": "example.org", "date": "2017-01-01 00:00:00",
                 "description": "", "url": "https://example.org", "image_url": ""} for t in texts[::2]]  # fmt: skip
        wiki = [{"text": t} for r in texts[1::2] for t in (" = Authors = \n", r, "")]
        tmp.mkdir(parents=True)
        (tmp / "cc_news.jsonl").write_text("".join(json.dumps(r) + "\n" for r in news))
        write_json(tmp / "wikitext.json", wiki)

    run_stage("synthetic NLG corpus", path, write)
    return [str(path / "cc_news.jsonl"), str(path / "wikitext.json")]


def mia_splits(cfg: MeowConfig, source: DataSource) -> tuple[list[dict], list[dict]]:
    holdout = cfg.mia.holdout_split or cfg.data.forget_split.replace("forget", "holdout")
    return source.load(cfg.data.forget_split), source.load(holdout)


def inputs(cfg: MeowConfig, source: DataSource) -> dict:
    """Every axis's data, read (and checked) once: a missing file or field stops the run before any model work."""
    axes = cfg.eval.axes
    out: dict = {}
    if "nlu" in axes:
        out["nlu"] = nlu_dir(cfg)
        for task in cfg.nlu.tasks:
            nlu.load_task(task, cfg.nlu.split, out["nlu"])
            if "meow" in cfg.nlu.protocols:
                nlu.load_task(task, cfg.nlu.fewshot_split, out["nlu"])
    if "nlg" in axes:
        out["nlg"] = nlg_texts(cfg, source)
    if "mia" in axes:
        out["mia"] = mia_splits(cfg, source)
    return out


def _compute(cfg: MeowConfig, axis: str, data, model, tokenizer, featurizer) -> dict[str, float]:
    if axis == "nlu":
        return {f"nlu/{k}": v for k, v in nlu.evaluate(model, tokenizer, cfg.nlu, data).items()}
    if axis == "nlg":
        return nlg.evaluate(model, tokenizer, data, cfg.nlg, featurizer() if cfg.nlg.featurizer == "target" else None)
    forget, holdout = data
    return mia.evaluate(
        model, tokenizer, forget, holdout, cfg.mia, family=cfg.model.family, max_length=cfg.data.max_length
    )


def measure(
    cfg: MeowConfig,
    data: dict,
    name: str,
    key,
    load: Callable[[], tuple],
    featurizer: Callable[[], tuple] | None = None,
) -> dict[str, float]:
    """Every new axis's metrics of one model (`key` identifies it; `load` gives (model, tokenizer) when a stage must
    be computed; `featurizer` gives the fine-tuned target for nlg.featurizer=target)."""
    out: dict[str, float] = {}
    loaded: list = []
    for axis in (a for a in cfg.eval.axes if a != "tofu"):
        section = getattr(cfg, axis)
        identity = data[axis] if axis != "mia" else [cfg.data.forget_split, cfg.mia.holdout_split]
        path = stage_path(
            cfg.cache_dir, f"meow/{axis}", key, section, identity, cfg.model.family, cfg.data.max_length,
            label=name, suffix=".json",
        )  # fmt: skip

        def compute(axis=axis) -> dict[str, float]:
            if not loaded:
                loaded.extend(load())
            model, tokenizer = loaded
            was_training = model.training
            model.eval()
            try:
                return _compute(cfg, axis, data[axis], model, tokenizer, featurizer)
            finally:
                model.train(was_training)

        done = run_stage(f"{name}: {axis}", path, lambda tmp, m: write_json(tmp, m), compute)
        out.update(json.loads(Path(done).read_text()))
    return out


def add_privleak(results: dict[str, dict[str, float]], attack: str) -> None:
    """privleak of every model against the retain model's AUC (when the retain model was measured)."""
    ref = results.get("retain", {}).get(f"mia/{attack}_auc")
    if ref is None:
        return
    for metrics in results.values():
        if f"mia/{attack}_auc" in metrics:
            metrics["mia/privleak"] = mia.privleak(metrics[f"mia/{attack}_auc"], ref)


AXIS_PREFIXES = ("nlu/", "nlg/", "mia/", "extraction/")


def flat(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """{model: metrics} -> `<model>/<metric>` (a metric's own '/' as '_'): TOFU's table columns and every axis's."""
    out = tofu_eval.flat(results)
    for name, metrics in results.items():
        out.update({f"{name}/{k.replace('/', '_')}": v for k, v in metrics.items() if k.startswith(AXIS_PREFIXES)})
    return out


def table(metrics: dict[str, float]) -> str:
    """One row per model (every model with a model utility or an axis metric): TOFU's columns, then each axis
    column some model has."""
    present = {h: c for h, c in COLUMNS.items() if any(k.endswith("/" + c.replace("/", "_")) for k in metrics)}
    cols = [c.replace("/", "_") for c in {**tofu_eval.COLUMNS, **present}.values()]
    models = list(dict.fromkeys(k[: -len(c) - 1] for k in metrics for c in cols if k.endswith("/" + c)))
    rows = [[m, *(metrics.get(f"{m}/{c}", float("nan")) for c in cols)] for m in models]
    return markdown_table(["model", *tofu_eval.COLUMNS, *present], rows)

"""TOFU evaluation exactly as TOFU's `evaluate_util.py` / `aggregate_eval_stat.py` define it.

Per eval set and row: ℓ(a|q) = mean token NLL of the answer given the prompt; the greedy answer's ROUGE-L recall.
Per set:
  * ROUGE      = mean ROUGE-L recall (stemmed) of the greedy answer against `answer`;
  * Probability = mean exp(−ℓ(answer)) on retain/forget; on real authors / world facts the true answer's share
                  exp(−ℓ(a)) / (exp(−ℓ(a)) + Σ_j exp(−ℓ(a_pert_j)));
  * Truth ratio: R = exp(mean_j ℓ(a_pert_j) − ℓ(a_base)), aggregated as mean min(R, 1/R) on the forget set and
                 mean max(0, 1 − 1/R) elsewhere (a_base is the paraphrased answer on retain/forget, else `answer`).
Forget quality = KS-test p-value between the forget-set R of the evaluated model and of the retain model.
Model utility  = harmonic mean of the nine retain / real-authors / world-facts numbers.
Logs are written in TOFU's own layout, so TOFU's published retain-model logs can serve as the FQ reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from rouge_score import rouge_scorer
from scipy.stats import hmean, ks_2samp

from common.errors import UserError
from common.io import write_json
from common.lm import collate, encode_qa, generate_answers, sequence_nll
from common.results import markdown_table
from methods.meow.config import EvalConfig

# (short name, TOFU log file, key of the base answer for the truth ratio)
EVAL_SETS = {
    "retain": ("eval_log.json", "paraphrased_answer"),
    "real_authors": ("eval_real_author_wo_options.json", "answer"),
    "world_facts": ("eval_real_world_wo_options.json", "answer"),
    "forget": ("eval_log_forget.json", "paraphrased_answer"),
}
UTILITY_SETS = ("retain", "real_authors", "world_facts")


@torch.no_grad()
def _per_token_nll(
    model, tokenizer, qa: list[tuple[str, str]], family: str, max_length: int, batch_size: int
) -> list[float]:
    device = next(model.parameters()).device
    encoded = [encode_qa(tokenizer, family, q, a, max_length) for q, a in qa]
    order = sorted(range(len(qa)), key=lambda i: len(encoded[i].input_ids))  # similar lengths share a batch
    out = [0.0] * len(qa)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in chunk], tokenizer.pad_token_id).items()}
        nll, count, _ = sequence_nll(model, batch)
        for i, v in zip(chunk, (nll / count.clamp(min=1)).tolist(), strict=True):
            out[i] = v
    return out


_ROUGE = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)


def eval_log(
    model, tokenizer, rows: list[dict], base_key: str, cfg: EvalConfig, *, family: str, max_length: int
) -> dict:
    """One set's TOFU log: per-row losses, generated answers and ROUGE, keyed by the row index as a string."""
    rows = rows[: cfg.max_rows] if cfg.max_rows else rows
    n_pert = len(rows[0]["perturbed_answer"])
    if any(len(r["perturbed_answer"]) != n_pert for r in rows):
        raise UserError("every row of an eval set must carry the same number of perturbed answers")
    qa = [(r["question"], r["answer"]) for r in rows] + [(r["question"], r[base_key]) for r in rows]
    qa += [(r["question"], p) for r in rows for p in r["perturbed_answer"]]
    losses = _per_token_nll(model, tokenizer, qa, family, max_length, cfg.batch_size)
    n = len(rows)
    gens = generate_answers(model, tokenizer, family, [r["question"] for r in rows], cfg.max_new_tokens, cfg.batch_size)
    scores = [_ROUGE.score(r["answer"], g) for r, g in zip(rows, gens, strict=True)]
    idx = [str(i) for i in range(n)]
    return {
        "avg_gt_loss": dict(zip(idx, losses[:n], strict=True)),
        "avg_paraphrased_loss": dict(zip(idx, losses[n : 2 * n], strict=True)),
        "avg_perturbed_loss": {i: losses[2 * n + k * n_pert : 2 * n + (k + 1) * n_pert] for k, i in enumerate(idx)},
        "rougeL_recall": {i: sc["rougeL"].recall for i, sc in zip(idx, scores, strict=True)},
        "rouge1_recall": {i: sc["rouge1"].recall for i, sc in zip(idx, scores, strict=True)},
        "generated_text": {i: [r["question"], g, r["answer"]] for i, r, g in zip(idx, rows, gens, strict=True)},
    }


def _values(log: dict, key: str) -> np.ndarray:
    return np.array(list(log[key].values()), dtype=np.float64)


def truth_ratios(log: dict) -> np.ndarray:
    """Per-row R = exp(mean_j ℓ(perturbed_j) − ℓ(base)): > 1 when the model prefers the true (paraphrased) answer."""
    return np.exp(_values(log, "avg_perturbed_loss").mean(-1) - _values(log, "avg_paraphrased_loss"))


def set_metrics(name: str, log: dict) -> dict[str, float]:
    r = truth_ratios(log)
    true_p = np.exp(-_values(log, "avg_gt_loss"))
    if name in ("real_authors", "world_facts"):
        prob = true_p / (true_p + np.exp(-_values(log, "avg_perturbed_loss")).sum(-1))
    else:
        prob = true_p
    tr = np.minimum(r, 1 / r) if name == "forget" else np.maximum(0, 1 - 1 / r)
    return {
        "rouge": float(_values(log, "rougeL_recall").mean()),
        "prob": float(prob.mean()),
        "truth_ratio": float(tr.mean()),
    }


def forget_quality(forget_log: dict, retain_forget_log: dict) -> float:
    return float(ks_2samp(truth_ratios(forget_log), truth_ratios(retain_forget_log)).pvalue)


def model_utility(per_set: dict[str, dict[str, float]]) -> float:
    values = [per_set[s][m] for s in UTILITY_SETS for m in ("rouge", "prob", "truth_ratio")]
    # hmean is 0 when any number is 0 (scipy rejects zeros on some versions; the limit is 0).
    return 0.0 if min(values) <= 0 else float(hmean(values))


def aggregate(logs: dict[str, dict], retain_forget_log: dict | None) -> dict[str, float]:
    """Flat metrics: <set>/<rouge|prob|truth_ratio>, model_utility, and forget_quality when a reference is given."""
    per_set = {name: set_metrics(name, log) for name, log in logs.items()}
    out = {f"{s}/{m}": v for s, ms in per_set.items() for m, v in ms.items()}
    out["model_utility"] = model_utility(per_set)
    if retain_forget_log is not None:
        out["forget_quality"] = forget_quality(logs["forget"], retain_forget_log)
    return out


def evaluate(
    model,
    tokenizer,
    splits: dict[str, list[dict]],
    cfg: EvalConfig,
    *,
    family: str,
    max_length: int,
    out_dir: Path | None = None,
) -> dict[str, dict]:
    """TOFU logs for the four sets (`splits` maps retain/real_authors/world_facts/forget to rows)."""
    was_training = model.training
    model.eval()
    logs = {
        name: eval_log(model, tokenizer, splits[name], EVAL_SETS[name][1], cfg, family=family, max_length=max_length)
        for name in EVAL_SETS
    }
    model.train(was_training)
    if out_dir is not None:
        for name, log in logs.items():
            write_json(out_dir / EVAL_SETS[name][0], log)
        write_json(out_dir / "eval_log_aggregated.json", {EVAL_SETS[k][0]: v for k, v in logs.items()})
    return logs


def load_forget_log(path: str | Path, max_rows: int | None = None) -> dict:
    """The retain model's forget-set log from a TOFU-format file: `eval_log_forget.json`, `eval_log_aggregated.json`
    (TOFU's aggregated file) or a directory holding either."""
    path = Path(path)
    if path.is_dir():
        path = next(
            (p for p in (path / "eval_log_forget.json", path / "eval_log_aggregated.json") if p.is_file()), path
        )
    if not path.is_file():
        raise UserError(f"{path}: retain reference log not found")
    try:
        log = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    log = log.get("eval_log_forget.json", log)
    for key in ("avg_paraphrased_loss", "avg_perturbed_loss"):
        if key not in log:
            raise UserError(f"{path}: field '{key}' missing (not a TOFU forget-set eval log)")
    if max_rows:
        log = {k: dict(list(v.items())[:max_rows]) if isinstance(v, dict) else v for k, v in log.items()}
    return log


# The paper's table: one row per model, from results.json's flat `<model>/<metric>` names.
COLUMNS = {
    "forget quality": "forget_quality",
    "model utility": "model_utility",
    "forget ROUGE": "forget/rouge",
    "retain ROUGE": "retain/rouge",
    "forget truth ratio": "forget/truth_ratio",
    "forget prob": "forget/prob",
}


def flat(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """{model: aggregate(...)} -> `<model>/forget_rouge`-style metrics of the table's columns."""
    return {f"{name}/{k.replace('/', '_')}": m[k] for name, m in results.items() for k in COLUMNS.values() if k in m}


def table(metrics: dict[str, float]) -> str:
    """Rows: every model with a model utility (fine-tuned, retain, each unlearning method); 4 significant digits."""
    models = [k.removesuffix("/model_utility") for k in metrics if k.endswith("/model_utility")]
    cols = [k.replace("/", "_") for k in COLUMNS.values()]
    return markdown_table(
        ["model", *COLUMNS], [[m, *(metrics.get(f"{m}/{c}", float("nan")) for c in cols)] for m in models]
    )

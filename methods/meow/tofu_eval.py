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

Logs are TOFU's files, key for key (`average_perturb_loss`, ...), so TOFU's published logs are read as they are
(`load_logs`: a run folder's four files or its eval_log_aggregated.json) and TOFU's aggregation script reads ours.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from rouge_score import rouge_scorer
from scipy.stats import hmean, ks_2samp

from common.dist import is_main_process, shard_map
from common.errors import UserError
from common.io import write_json
from common.lm import collate, encode_qa, format_prompt, generate_answers, sequence_nll
from common.results import markdown_table
from methods.meow.config import EvalConfig

# (short name, TOFU log file, key of the base answer for the truth ratio)
EVAL_SETS = {
    "retain": ("eval_log.json", "paraphrased_answer"),
    "real_authors": ("eval_real_author_wo_options.json", "answer"),
    "world_facts": ("eval_real_world_wo_options.json", "answer"),
    "forget": ("eval_log_forget.json", "paraphrased_answer"),
}
AGGREGATED = "eval_log_aggregated.json"  # the four sets' logs under their file names
UTILITY_SETS = ("retain", "real_authors", "world_facts")
GENERAL_SETS = ("real_authors", "world_facts")  # probability = the true answer's share among the options
# What TOFU's aggregate_eval_stat.py reads from every set's log.
READ_KEYS = ("avg_gt_loss", "average_perturb_loss", "avg_paraphrased_loss", "rougeL_recall")


@torch.no_grad()
def _answer_nll(
    model, tokenizer, qa: list[tuple[str, str]], family: str, max_length: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL of each answer given its question, and the answer's token count."""
    device = next(model.parameters()).device
    encoded = [encode_qa(tokenizer, family, q, a, max_length) for q, a in qa]
    order = sorted(range(len(qa)), key=lambda i: len(encoded[i].input_ids))  # similar lengths share a batch
    nll, count = np.zeros(len(qa)), np.zeros(len(qa), dtype=np.int64)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in chunk], tokenizer.pad_token_id).items()}
        summed, n, _ = sequence_nll(model, batch)
        nll[chunk], count[chunk] = summed.cpu().numpy(), n.cpu().numpy()
    return nll, count


_ROUGE = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)


def eval_log(model, tokenizer, rows: list[dict], name: str, cfg: EvalConfig, *, family: str, max_length: int) -> dict:
    """One set's log with TOFU's keys, in the order TOFU writes them: per key, {row index as a string: value}."""
    rows = rows[: cfg.max_rows] if cfg.max_rows else rows
    base_key = EVAL_SETS[name][1]
    n, n_pert = len(rows), len(rows[0]["perturbed_answer"])
    if any(len(r["perturbed_answer"]) != n_pert for r in rows):
        raise UserError("every row of an eval set must carry the same number of perturbed answers")
    qa = [(r["question"], r["answer"]) for r in rows] + [(r["question"], r[base_key]) for r in rows]
    qa += [(r["question"], p) for r in rows for p in r["perturbed_answer"]]
    # Split across the job's processes under torchrun (each rank scores and generates its share), gathered in order.
    per_pair = shard_map(
        lambda part: list(zip(*_answer_nll(model, tokenizer, part, family, max_length, cfg.batch_size))), qa
    )
    nll, count = (np.array(column) for column in zip(*per_pair))
    per_token = nll / np.maximum(count, 1)
    gt, base, pert = slice(0, n), slice(n, 2 * n), slice(2 * n, None)
    pert_nll, pert_count, pert_avg = (a[pert].reshape(n, n_pert) for a in (nll, count, per_token))
    gens = shard_map(
        lambda qs: generate_answers(model, tokenizer, family, qs, cfg.max_new_tokens, cfg.batch_size),
        [r["question"] for r in rows],
    )
    scores = [_ROUGE.score(r["answer"], g) for r, g in zip(rows, gens, strict=True)]
    idx = [str(i) for i in range(n)]

    def per_row(values) -> dict:
        return dict(zip(idx, values.tolist() if isinstance(values, np.ndarray) else values, strict=True))

    log = {
        "avg_gt_loss": per_row(per_token[gt]),
        "gt_loss": per_row(nll[gt]),
        "num_token_gt": per_row(count[gt]),
        "generated_text": per_row(
            [[format_prompt(family, r["question"], tokenizer), g, r["answer"]] for r, g in zip(rows, gens, strict=True)]
        ),
        "rouge1_recall": per_row([s["rouge1"].recall for s in scores]),
        "rougeL_recall": per_row([s["rougeL"].recall for s in scores]),
        "average_perturb_loss": per_row(pert_avg),
        "avg_paraphrased_loss": per_row(per_token[base]),
        # TOFU's stored ratio is geomean P(perturbed) / P(base), the inverse of R below.
        "truth_ratio": per_row(np.exp(per_token[base] - pert_avg.mean(-1))),
        "paraphrased_loss": per_row(nll[base]),
        "perturb_loss": per_row(pert_nll),
        "num_token_paraphrased": per_row(count[base]),
        "num_token_perturb": per_row(pert_count),
    }
    if name in GENERAL_SETS:  # TOFU adds it to the sets scored without options: −log of the true answer's share
        p = np.exp(-np.concatenate([per_token[gt, None], pert_avg], axis=1))
        log["normalized_gt_loss"] = per_row(-np.log(p[:, 0] / p.sum(-1)))
    return log


def _values(log: dict, key: str) -> np.ndarray:
    return np.array(list(log[key].values()), dtype=np.float64)


def truth_ratios(log: dict) -> np.ndarray:
    """Per-row R = exp(mean_j ℓ(perturbed_j) − ℓ(base)): > 1 when the model prefers the true (paraphrased) answer."""
    return np.exp(_values(log, "average_perturb_loss").mean(-1) - _values(log, "avg_paraphrased_loss"))


def set_metrics(name: str, log: dict) -> dict[str, float]:
    r = truth_ratios(log)
    true_p = np.exp(-_values(log, "avg_gt_loss"))
    if name in GENERAL_SETS:
        prob = true_p / (true_p + np.exp(-_values(log, "average_perturb_loss")).sum(-1))
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
    """TOFU logs for the four sets (`splits` maps retain/real_authors/world_facts/forget to rows), written as TOFU
    writes them (one file per set and the aggregated file) when `out_dir` is given. Under torchrun every process
    calls this: each scores its share of the rows, all get the whole logs, the main process writes them."""
    was_training = model.training
    model.eval()
    logs = {
        name: eval_log(model, tokenizer, splits[name], name, cfg, family=family, max_length=max_length)
        for name in EVAL_SETS
    }
    model.train(was_training)
    if out_dir is not None and is_main_process():
        write_logs(logs, out_dir)
    return logs


def write_logs(logs: dict[str, dict], out_dir: Path) -> None:
    """One file per set and the aggregated file, as TOFU writes them."""
    for name, log in logs.items():
        write_json(out_dir / EVAL_SETS[name][0], log)
    write_json(out_dir / AGGREGATED, {EVAL_SETS[k][0]: v for k, v in logs.items()})


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object (a TOFU eval log)")
    return data


def _checked(log: dict, where: str) -> dict:
    missing = [k for k in READ_KEYS if k not in log]
    if missing:
        raise UserError(f"{where}: field '{missing[0]}' missing (not a TOFU eval log)")
    return log


def load_logs(
    path: str | Path, names: tuple[str, ...] = tuple(EVAL_SETS), max_rows: int | None = None
) -> dict[str, dict]:
    """The named sets' logs of a TOFU run: a folder holding the per-set files (eval_log.json, eval_log_forget.json,
    eval_real_author_wo_options.json, eval_real_world_wo_options.json) or eval_log_aggregated.json, or the
    aggregated file itself; for one set, also that set's own file. Every set is cut to its first `max_rows` rows."""
    path = Path(path)
    if path.is_dir():
        files = [path / EVAL_SETS[n][0] for n in names]
        if all(f.is_file() for f in files):
            return {n: _cut(_checked(_read(f), str(f)), max_rows) for n, f in zip(names, files, strict=True)}
        if not (path / AGGREGATED).is_file():
            want = ", ".join(EVAL_SETS[n][0] for n in names)
            raise UserError(f"{path}: no TOFU eval logs in it (want {want}, or {AGGREGATED})")
        path = path / AGGREGATED
    if not path.is_file():
        raise UserError(f"{path}: TOFU eval log not found")
    data = _read(path)
    if len(names) == 1 and EVAL_SETS[names[0]][0] not in data and "avg_gt_loss" in data:
        return {names[0]: _cut(_checked(data, str(path)), max_rows)}  # the set's own file, under whatever name
    for n in names:
        if EVAL_SETS[n][0] not in data:
            raise UserError(f"{path}: no '{EVAL_SETS[n][0]}' in it (want TOFU's {AGGREGATED} or a run folder)")
    return {n: _cut(_checked(data[EVAL_SETS[n][0]], f"{path}: {EVAL_SETS[n][0]}"), max_rows) for n in names}


def _cut(log: dict, max_rows: int | None) -> dict:
    """The log's first `max_rows` rows in every per-row field, as TOFU's ds_size cap selects them."""
    if not max_rows:
        return log
    return {k: dict(list(v.items())[:max_rows]) if isinstance(v, dict) else v for k, v in log.items()}


def load_forget_log(path: str | Path, max_rows: int | None = None) -> dict:
    """The retain model's forget-set log (the forget-quality reference), cut to its first `max_rows` rows."""
    return load_logs(path, ("forget",), max_rows)["forget"]


# TOFU's prompts (evaluate_util.py run_generation: the input decoded without special tokens): Llama-2
# "[INST] q [/INST]", Phi "Question: q\n" (ours: "Question: q\nAnswer: "); any other template is kept whole.
_PROMPTS = (
    re.compile(r"^\s*\[INST\](.*)\[/INST\]\s*$", re.S),
    re.compile(r"^\s*Question:(.*?)(?:\nAnswer:\s*)?$", re.S),
)


def _question(prompt: str) -> str:
    for template in _PROMPTS:
        if m := template.match(prompt):
            return m.group(1).strip()
    return prompt.strip()


def questions(log: dict) -> list[str] | None:
    """The questions of a log's rows, in order, when the log records them: TOFU's `generated_text` holds per row
    [prompt, generated answer, true answer], the prompt wrapping the question in the model's template."""
    texts = log.get("generated_text")
    if not isinstance(texts, dict) or not texts:
        return None
    if not all(isinstance(t, list | tuple) and t and isinstance(t[0], str) for t in texts.values()):
        return None
    return [_question(t[0]) for t in texts.values()]


def _short(text: str, n: int = 60) -> str:
    return repr(text if len(text) <= n else text[: n - 3] + "...")


def check_same_questions(log: dict, reference: dict, where: str, reference_where: str) -> None:
    """Forget quality compares row sets: refuse (one line naming both) a reference of other questions.

    TOFU's forget log is keyed by the row index ("0", "1", ...), so the keys alone cannot tell forget01 from the first
    40 rows of forget10. Both TOFU's logs and ours record each row's prompt in `generated_text`: when both logs carry
    it, the questions are compared (whitespace ignored, since TOFU's prompts are re-decoded token ids); otherwise
    the row count and the index keys in order."""
    ours, theirs = questions(log), questions(reference)
    by = "questions"
    if ours is None or theirs is None:
        ours, theirs, by = list(log["average_perturb_loss"]), list(reference["average_perturb_loss"]), "row keys"
    both = f"{where} and {reference_where}"
    if len(ours) != len(theirs):
        raise UserError(
            f"{both}: forget sets of different sizes ({len(ours)} vs {len(theirs)} rows); "
            "the retain log must come from the same forget split (and eval.max_rows)"
        )

    def key(text: str) -> str:
        return "".join(text.split())

    a, b = [key(q) for q in ours], [key(q) for q in theirs]
    if a == b:
        return
    if sorted(a) == sorted(b):
        raise UserError(f"{both}: the same forget-set {by} in another order; the rows must pair up")
    i = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    raise UserError(
        f"{both}: forget-set {by} differ from row {i} ({_short(ours[i])} vs {_short(theirs[i])}); "
        "the retain log must come from the same forget split"
    )


def score_logs(run_logs: str | Path, retain_log: str | Path | None, max_rows: int | None = None) -> dict[str, float]:
    """`aggregate` of a TOFU run's logs, each set cut to `max_rows` rows, with forget quality against the retain
    model's forget log (cut alike, and of the same questions) when one is given."""
    logs = load_logs(run_logs, max_rows=max_rows)
    reference = None
    if retain_log:
        reference = load_forget_log(retain_log, max_rows)
        check_same_questions(logs["forget"], reference, f"eval.run_logs={run_logs}", f"eval.retain_log={retain_log}")
    return aggregate(logs, reference)


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

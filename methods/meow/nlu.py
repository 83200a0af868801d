"""NLU after unlearning: ARC-Challenge, ARC-Easy and PIQA, scored two ways.

* `meow`: the MEOW code's protocol (`evaluator/metrics/{arcc,arce,piqa}.py`). ARC: 4 few-shot examples drawn per
  question with `random.sample` from the train split (one `random.Random(42)` stream per task, questions in order), the
  official prompt ("Please answer my question with the correct choices. ..."), greedy decoding of 128 new tokens,
  correct when the answer key letter appears in the first 8 characters of the output. PIQA: the first 4 train rows as
  examples, the official "Please answer with 0 or 1" prompt, correct when the label digit is in the first 10 characters.
* `lm_eval` / `loglik`: the ecosystem's standard, log-likelihood multiple choice with lm-eval's own task prompts
  ("Question: ...\\nAnswer:" + " " + choice). acc = the choice of highest summed log-probability; acc_norm = highest
  log-probability per character of the choice. `lm_eval` runs lm-evaluation-harness itself on the in-memory model
  (its tasks pointed at our local files); `loglik` is our batched scorer of the same requests, split across processes.

Data is read with `datasets` in the published layouts: ARC rows `id, question, choices{text, label}, answerKey`, PIQA
rows `goal, sol1, sol2, label`; a local directory holds `<task>/<split>.{jsonl,json,parquet}`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.dist import shard_map
from common.errors import UserError
from common.lm import generate_greedy
from methods.meow.memo import official_decode

# task -> (hub dataset, hub config, fields every row must carry)
ARC_FIELDS = ("id", "question", "choices", "answerKey")
PIQA_FIELDS = ("goal", "sol1", "sol2", "label")
TASKS = {
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", ARC_FIELDS),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", ARC_FIELDS),
    "piqa": ("baber/piqa", None, PIQA_FIELDS),
}
EXTENSIONS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def task_file(path: str | Path, task: str, split: str) -> Path:
    for ext in EXTENSIONS:
        f = Path(path) / task / f"{split}{ext}"
        if f.is_file():
            return f
    raise UserError(f"{path}: no {task}/{split}.jsonl, .json or .parquet (NLU task '{task}', split '{split}')")


def load_task(task: str, split: str, path: str | Path | None) -> list[dict]:
    """Rows of a task's split: from `<path>/<task>/<split>.*` or, with no path, from the hub dataset."""
    from datasets import load_dataset

    if task not in TASKS:
        raise UserError(f"unknown NLU task '{task}'; known: {', '.join(TASKS)}")
    hub, name, fields = TASKS[task]
    if path is None:
        try:
            data = load_dataset(hub, name, split=split)
        except Exception as e:  # noqa: BLE001 - the hub is optional; any failure to reach it is the environment's
            raise UserError(
                f"cannot load {hub} {name or ''} '{split}' from the hub: {str(e).splitlines()[0]}"
            ) from None
        where = f"{hub} {split}"
    else:
        f = task_file(path, task, split)
        data = load_dataset(EXTENSIONS[f.suffix], data_files={split: str(f)}, split=split)
        where = str(f)
    rows = [dict(r) for r in data]
    for i, r in enumerate(rows, start=1):
        for field in fields:
            if r.get(field) is None:  # `datasets` fills a field other rows have with None
                raise UserError(f"{where}: record {i}: field '{field}' missing (NLU task '{task}')")
        if fields is ARC_FIELDS and r["answerKey"] not in r["choices"]["label"]:
            raise UserError(f"{where}: record {i}: answerKey '{r['answerKey']}' is not one of choices.label")
    return rows


# ---------------------------------------------------------------- MEOW's protocol (generation)


def _arc_block(row: dict) -> str:
    text = f"[INST]\nQuestion: {row['question']}\n [/INST]\nChoices:\n"
    return text + "".join(
        f"{label}: {choice}\n" for label, choice in zip(row["choices"]["label"], row["choices"]["text"])
    )


def arc_prompt(shots: Sequence[dict], row: dict) -> str:
    """The MEOW code's ARC prompt (examples run on without a newline after each answer letter, as there)."""
    prompt = "Please answer my question with the correct choices. Here are 4 examples:\n"
    prompt += "".join(_arc_block(s) + f"Answer:{s['answerKey']}" for s in shots)
    return prompt + _arc_block(row) + "Answer:"


def _piqa_question(row: dict) -> str:
    return (
        f'Here is a question: "{row["goal"]}". Please answer with 0 or 1 based on the following solutions:\n'
        f" 0. {row['sol1']} \n1. {row['sol2']}\n Answer:"
    )


def piqa_prompt(shots: Sequence[dict], row: dict) -> str:
    """The MEOW code's PIQA prompt: its 4 examples are the first train rows."""
    examples = "".join(f"Example {i + 1}: {_piqa_question(s)} {s['label']}\n" for i, s in enumerate(shots))
    return "Here are some examples:" + examples + _piqa_question(row)


def meow_prompts(task: str, rows: Sequence[dict], pool: Sequence[dict], shots: int, seed: int) -> list[str]:
    if task == "piqa":
        return [piqa_prompt(pool[:shots], r) for r in rows]
    rng = random.Random(seed)  # the official module seeds `random` once and samples per question in order
    return [arc_prompt(rng.sample(list(pool), shots), r) for r in rows]


def meow_correct(task: str, row: dict, output: str) -> bool:
    """The official check: the label in the output's first 8 characters (PIQA: its first 10)."""
    if task == "piqa":
        return str(row["label"]) in output[:10]
    return row["answerKey"] in output[:8]


def meow_outputs(model, tokenizer, prompts: Sequence[str], cfg) -> list[str]:
    """Greedy outputs split across processes; `official` decodes them as the MEOW code does (see memo.py)."""
    if cfg.decode == "official":
        fn = lambda ps: official_decode(model, tokenizer, ps, cfg.max_new_tokens, cfg.batch_size)  # noqa: E731
    else:
        fn = lambda ps: generate_greedy(model, tokenizer, ps, cfg.max_new_tokens, cfg.batch_size)  # noqa: E731
    return shard_map(fn, list(prompts))


# ---------------------------------------------------------------- log-likelihood multiple choice (lm-eval's prompts)


def mc_requests(task: str, row: dict) -> tuple[str, list[str], int]:
    """(context, choices, gold index) as lm-eval's arc_* / piqa tasks build them; continuations are ' ' + choice."""
    if task == "piqa":
        return f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], int(row["label"])
    labels = row["choices"]["label"]
    return f"Question: {row['question']}\nAnswer:", list(row["choices"]["text"]), labels.index(row["answerKey"])


def _encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], int]:
    """Token ids of context + continuation and the number of continuation tokens, split as lm-eval splits them:
    the whole string is tokenized and the context's own token count marks the boundary."""
    whole = tokenizer(context + continuation)["input_ids"]
    n_context = len(tokenizer(context)["input_ids"])
    return whole, len(whole) - n_context


@torch.no_grad()
def loglikelihoods(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int) -> list[float]:
    """Summed log-probability of each continuation given its context; similar lengths share a right-padded batch."""
    device = next(model.parameters()).device
    encoded = [_encode_pair(tokenizer, c, x) for c, x in pairs]
    order = sorted(range(len(pairs)), key=lambda i: len(encoded[i][0]))
    out = [0.0] * len(pairs)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i][0]) for i in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(chunk):
            n = len(encoded[i][0])
            ids[row, :n], mask[row, :n] = torch.tensor(encoded[i][0]), 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for row, i in enumerate(chunk):
            whole, k = encoded[i]
            n = len(whole)
            # Only the positions predicting the continuation need the vocabulary's normalisation.
            logp = F.log_softmax(logits[row, n - k - 1 : n - 1].float(), -1)
            targets = torch.tensor(whole[n - k :], device=device)
            out[i] = float(logp.gather(-1, targets[:, None]).sum())
    return out


def loglik_scores(model, tokenizer, task: str, rows: Sequence[dict], batch_size: int) -> dict[str, float]:
    """acc and acc_norm of our batched scorer; every (row, choice) pair is scored once, split across processes."""
    requests = [mc_requests(task, r) for r in rows]
    pairs = [(ctx, " " + choice) for ctx, choices, _ in requests for choice in choices]
    lls = shard_map(lambda part: loglikelihoods(model, tokenizer, part, batch_size), pairs)
    acc, acc_norm, pos = [], [], 0
    for _, choices, gold in requests:
        ll = np.array(lls[pos : pos + len(choices)])
        pos += len(choices)
        acc.append(int(np.argmax(ll)) == gold)
        acc_norm.append(int(np.argmax(ll / np.array([len(c) for c in choices], dtype=float))) == gold)
    return {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm))}


# lm-eval's own YAML of each task, under its package's tasks/ folder.
LM_EVAL_YAML = {"arc_challenge": "arc/arc_challenge.yaml", "arc_easy": "arc/arc_easy.yaml", "piqa": "piqa/piqa.yaml"}


def lm_eval_task(task: str, path: str | Path, split: str) -> dict:
    """lm-eval's own task config for `task` (prompt, choices, metrics), its data pointed at our local file, evaluated
    on `split`. Read from its YAML directly: indexing every task lm-eval ships takes tens of seconds."""
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = dict(load_yaml(Path(lm_eval.tasks.__file__).parent / LM_EVAL_YAML[task], resolve_func=True))
    f = task_file(path, task, split)
    cfg.update(
        dataset_path=EXTENSIONS[f.suffix],
        dataset_name=None,
        dataset_kwargs={"data_files": {split: str(f)}},
        training_split=None,
        validation_split=split,
        test_split=None,
        fewshot_split=None,
    )
    return cfg


def lm_eval_run(
    model, tokenizer, tasks: Sequence[str], path: str | Path, split: str, batch_size: int, limit: int | None = None
) -> dict:
    """lm-evaluation-harness's simple_evaluate on the in-memory model (0-shot, its HF runner, per-sample logs kept)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=[lm_eval_task(t, path, split) for t in tasks],
        task_manager=TaskManager(include_defaults=False),
        num_fewshot=0,
        limit=limit,
        log_samples=True,
    )


def lm_eval_scores(
    model, tokenizer, tasks: Sequence[str], path: str | Path, split: str, batch_size: int, limit: int | None = None
) -> dict:
    """{task: {acc, acc_norm}} from lm-evaluation-harness (its first `limit` rows of each task)."""
    out = lm_eval_run(model, tokenizer, tasks, path, split, batch_size, limit)
    return {t: {m: float(out["results"][t][f"{m},none"]) for m in ("acc", "acc_norm")} for t in tasks}


def evaluate(model, tokenizer, cfg, data: str | Path | None) -> dict[str, float]:
    """`<task>/meow_acc` (MEOW's protocol), `<task>/acc` and `<task>/acc_norm` (our scorer), `<task>/lm_eval_acc`
    and `<task>/lm_eval_acc_norm` (lm-evaluation-harness), as `cfg.protocols` asks; `data` is a directory in the
    published layouts or None for the hub. Under torchrun every process calls this (lm-eval runs whole on each)."""
    out: dict[str, float] = {}
    for task in cfg.tasks:
        rows = load_task(task, cfg.split, data)[: cfg.max_rows]
        if "meow" in cfg.protocols:
            prompts = meow_prompts(task, rows, load_task(task, cfg.fewshot_split, data), cfg.shots, cfg.shot_seed)
            outputs = meow_outputs(model, tokenizer, prompts, cfg)
            out[f"{task}/meow_acc"] = float(np.mean([meow_correct(task, r, o) for r, o in zip(rows, outputs)]))
        if "loglik" in cfg.protocols:
            out.update(
                {f"{task}/{k}": v for k, v in loglik_scores(model, tokenizer, task, rows, cfg.batch_size).items()}
            )
    if "lm_eval" in cfg.protocols:
        if data is None:
            raise UserError("nlu.protocols=[lm_eval] reads local files: give nlu.source=local (or synthetic)")
        scores = lm_eval_scores(model, tokenizer, cfg.tasks, data, cfg.split, cfg.batch_size, cfg.max_rows)
        out.update({f"{t}/lm_eval_{k}": v for t, ms in scores.items() for k, v in ms.items()})
    return out


def synthetic_tasks(out_dir: Path, seed: int, n_val: int = 20, n_train: int = 8) -> None:
    """Small ARC-Challenge / ARC-Easy / PIQA sets in the published layouts, asking about the synthetic TOFU data's
    general-knowledge facts (which a tiny model learns in fine-tuning, so its accuracy can move with unlearning)."""
    from common.io import write_json  # noqa: I001 - local: only the embedded default writes these
    from methods.meow.data import CAPITAL, CLASSIC_AUTHOR, CLASSIC_BOOK, COUNTRY

    rng = random.Random(seed)

    def arc(prefix: str, questions: list[str], answers: list[str]) -> list[dict]:
        rows = []
        for i, (q, a) in enumerate(zip(questions, answers)):
            texts = rng.sample([a, *rng.sample([x for x in answers if x != a], 3)], 4)
            labels = ["A", "B", "C", "D"]
            rows.append({"id": f"{prefix}_{i}", "question": q, "choices": {"text": texts, "label": labels},
                         "answerKey": labels[texts.index(a)]})  # fmt: skip
        return rows

    sets = {
        "arc_challenge": arc("Mercury", [f"Who wrote the novel '{b}'?" for b in CLASSIC_BOOK], CLASSIC_AUTHOR),
        "arc_easy": arc("MCAS", [f"What is the capital of {c}?" for c in COUNTRY], CAPITAL),
        "piqa": [
            {
                "goal": f"To visit the capital of {c},",
                "sol1": f"travel to {a}." if (lab := rng.randrange(2)) == 0 else f"travel to {b}.",
                "sol2": f"travel to {b}." if lab == 0 else f"travel to {a}.",
                "label": lab,
            }
            for c, a, b in zip(COUNTRY, CAPITAL, CAPITAL[1:] + CAPITAL[:1])
        ],  # fmt: skip
    }
    for task, rows in sets.items():
        rng.shuffle(rows)
        write_json(out_dir / task / "train.json", rows[:n_train])
        write_json(out_dir / task / "validation.json", rows[n_train : n_train + n_val])

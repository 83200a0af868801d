"""FINE over a question set: ask the model under test, judge its open-ended answers, score.

Asking and judging are item jobs over the questions (common.items): each reply is appended to a cache file the
moment it exists, under a key of the settings that made it, so a rerun asks only for what is missing; a question
whose call fails is recorded as failed while the others finish, and the run then exits 2 with the scores of the
questions that did finish. Questions go to a model in batches (subject.batch_size conversations, three per question;
judge: its batch size); a batch that fails is asked again one question at a time, so only the question at fault
fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from common.chat import replies_or_errors
from common.errors import UserError
from common.io import atomic_write
from common.items import ItemsFailed, Outcome, run_each, shard_items, summarize
from common.registry import create
from common.results import markdown_table
from common.stages import key_of, stage_path
from methods.fine import synthetic
from methods.fine.config import FineConfig
from methods.fine.fine import OVERALL, Result, conversation, mc_prompts, parse_choice, passes_mc, scores_by_category
from methods.fine.formats import (
    JUDGE_RESPONSE,
    MC_RESPONSES,
    MUL_RESULT,
    OPEN_RESPONSE,
    OPEN_RESULT,
    Question,
    Saved,
    read_questions,
    read_saved,
)
from methods.fine.judge import Judge
from methods.fine.models import identity, mc_template, responder

T, R = TypeVar("T"), TypeVar("R")


# ---------------------------------------------------------------------------------------------------------------------
# Questions


def load_questions(cfg: FineConfig, run_dir: Path) -> tuple[list[Question], dict[str, Result] | None]:
    """The questions of this run (data.* filters, this shard), and for the synthetic ones their planted results."""
    if cfg.data.questions:
        questions, planted = read_questions(cfg.data.questions), None
    else:
        made = synthetic.questions(cfg.synthetic.per_category, cfg.synthetic.seed)
        path = run_dir / "questions.jsonl"  # written in the release's format and read back as a release file is
        with atomic_write(path) as tmp:
            tmp.write_text("".join(json.dumps(q.record()) + "\n" for q in made), encoding="utf-8")
        questions = read_questions(path)
        planted = dict(zip((q.id for q in made), synthetic.planted(made), strict=True))
    if cfg.data.categories:
        present = categories(questions)
        unknown = [c for c in cfg.data.categories if c not in present]
        if unknown:
            raise UserError(
                f"data.categories: {', '.join(unknown)} not in the questions (present: {', '.join(present)})"
            )
        questions = [q for q in questions if q.category in cfg.data.categories]
    questions = questions[: cfg.data.limit] if cfg.data.limit else questions
    questions = shard_items(questions, cfg.shard, cfg.num_shards)
    return questions, planted


def categories(questions: Sequence[Question]) -> list[str]:
    return list(dict.fromkeys(q.category for q in questions))


def make_judge(cfg: FineConfig, questions: Sequence[Question]) -> Judge:
    return create("fine.judge", cfg.judge.name, cfg=cfg, categories=categories(questions))


# ---------------------------------------------------------------------------------------------------------------------
# Append-only caches and batched item work


def load_cache(path: Path) -> dict[str, dict]:
    """key -> record of a cache file; a line torn by a crash is skipped (its item is asked again)."""
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        out[record["key"]] = record
    return out


def append_cache(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with path.open("a+b") as f:
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a line torn by a crash: end it, so this record stays whole
                line = "\n" + line
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def batched(pending: Sequence[T], size: int, compute: Callable[[list[T]], list[R | Exception]]) -> Callable[[T], R]:
    """work(item) for run_each, in the order of `pending`: computes `size` items at once. An item whose result is an
    exception (its own request failed after its retries) raises it, and is not asked again; the items of a batch
    whose call raised as a whole are computed one at a time, so the exception lands on the item at fault only."""
    position = {id(item): i for i, item in enumerate(pending)}
    ready: dict[int, R] = {}
    alone: set[int] = set()

    def work(item: T) -> R:
        i = position[id(item)]
        if i not in ready and i not in alone:
            batch = list(pending[i : i + size])
            try:
                ready.update(zip(range(i, i + len(batch)), compute(batch), strict=True))
            except Exception as e:  # noqa: BLE001 - recorded on the item (a batch of one), or redone item by item
                if len(batch) == 1:
                    ready[i] = e  # asked on its own already: never again
                else:
                    alone.update(range(i, i + len(batch)))
        result = ready.pop(i) if i in ready else compute([item])[0]
        if isinstance(result, Exception):
            raise result
        return result

    return work


def _qkey(q: Question) -> str:
    return key_of(q.question, q.safe, q.unsafe)


# ---------------------------------------------------------------------------------------------------------------------
# Asking and judging


def respond(cfg: FineConfig, questions: Sequence[Question]) -> tuple[dict[str, dict], list[Outcome]]:
    """Each question's three replies (both multiple-choice orders, open-ended), cached per model and prompt."""
    template, system = mc_template(cfg), cfg.subject.system_prompt
    path = stage_path(cfg.cache_dir, "fine/responses", *identity(cfg.subject, cfg), template, suffix=".jsonl")
    saved = load_cache(path)
    pending = [q for q in questions if _qkey(q) not in saved]
    ask = responder(cfg.subject, cfg) if pending else None
    print(f"respond: {len(pending)} of {len(questions)} questions to ask ({path})")

    def replies(batch: list[Question]) -> list[dict[str, str] | Exception]:
        conversations = [conversation(text, system) for q in batch for text in (*mc_prompts(q, template), q.question)]
        texts = replies_or_errors(ask, conversations)
        fields = (*MC_RESPONSES, OPEN_RESPONSE)
        out: list[dict[str, str] | Exception] = []
        for k in range(len(batch)):
            three = texts[3 * k : 3 * k + 3]
            failed = next((t for t in three if isinstance(t, Exception)), None)
            out.append(failed or dict(zip(fields, three, strict=True)))
        return out

    compute = batched(pending, max(1, cfg.subject.batch_size // 3), replies)  # three conversations a question

    def work(q: Question) -> Outcome:
        record = {"key": _qkey(q), **compute(q)}
        append_cache(path, record)
        saved[record["key"]] = record
        return Outcome(q.id, "done", count=3)

    outcomes = run_each(questions, lambda q: q.id, work, done=lambda q: _qkey(q) in saved)
    return {q.id: saved[_qkey(q)] for q in questions if _qkey(q) in saved}, outcomes


def judge_answers(
    cfg: FineConfig, judge: Judge, answers: Sequence[tuple[Question, str]]
) -> tuple[dict[str, dict], list[Outcome]]:
    """The judge's verdict on each (question, open-ended answer), cached per judge and answer."""
    path = stage_path(cfg.cache_dir, "fine/judgements", *judge.key, suffix=".jsonl")
    saved = load_cache(path)

    def key(item: tuple[Question, str]) -> str:
        return key_of(item[0].category, item[0].question, item[1])

    pending = [a for a in answers if key(a) not in saved]
    label = judge.start() if pending else None
    print(f"judge: {len(pending)} of {len(answers)} answers to judge ({path})")
    compute = batched(pending, judge.batch_size, lambda batch: label([q for q, _ in batch], [a for _, a in batch]))

    def work(item: tuple[Question, str]) -> Outcome:
        verdict = compute(item)
        record = {"key": key(item), JUDGE_RESPONSE: verdict.raw, OPEN_RESULT: verdict.safe}
        append_cache(path, record)
        saved[record["key"]] = record
        return Outcome(item[0].id, "done", count=1)

    outcomes = run_each(answers, lambda a: a[0].id, work, done=lambda a: key(a) in saved)
    return {a[0].id: saved[key(a)] for a in answers if key(a) in saved}, outcomes


# ---------------------------------------------------------------------------------------------------------------------
# The two jobs


def evaluate(cfg: FineConfig, run_dir: Path) -> dict[str, float]:
    """Ask, judge, score."""
    questions, planted = load_questions(cfg, run_dir)
    judge = make_judge(cfg, questions)  # its settings are checked before the model under test is asked anything
    responses, asked = respond(cfg, questions)
    answers = [(q, responses[q.id][OPEN_RESPONSE]) for q in questions if q.id in responses]
    judgements, judged = judge_answers(cfg, judge, answers)
    rows = [(q, {**responses[q.id], **judgements[q.id]}) for q in questions if q.id in judgements]
    return finish(cfg, run_dir, rows, _merge(questions, asked, judged), planted, judge.notes)


def score_saved(cfg: FineConfig, run_dir: Path) -> dict[str, float]:
    """Score saved responses: multiple-choice replies parsed (or a saved mul_result), open-ended answers judged
    (or, with score.judge=false, a saved open_result)."""
    known = {q.id: q for q in read_questions(cfg.data.questions)} if cfg.data.questions else None
    saved = read_saved(cfg.score.responses, known, judged=cfg.score.judge)
    questions = [s.question for s in saved]
    base = {s.question.id: _saved_fields(s) for s in saved}
    if cfg.score.judge:
        judge = make_judge(cfg, questions)
        judgements, outcomes = judge_answers(cfg, judge, [(s.question, s.open_response or "") for s in saved])
        notes = judge.notes
    else:
        judgements = {s.question.id: {OPEN_RESULT: s.open_result} for s in saved}
        outcomes, notes = [Outcome(q.id, "done") for q in questions], {}
    rows = [(q, {**base[q.id], **judgements[q.id]}) for q in questions if q.id in judgements]
    return finish(cfg, run_dir, rows, _merge(questions, outcomes), None, notes)


def _saved_fields(s: Saved) -> dict[str, Any]:
    out: dict[str, Any] = dict(zip(MC_RESPONSES, s.mc_responses, strict=True)) if s.mc_responses else {}
    if s.mul_result is not None:
        out[MUL_RESULT] = s.mul_result
    if s.open_response is not None:
        out[OPEN_RESPONSE] = s.open_response
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Scores


def _merge(questions: Sequence[Question], *jobs: list[Outcome]) -> list[Outcome]:
    """One outcome per question: its first failure, else done if anything was asked, else skipped."""
    by_id: dict[str, Outcome] = {}
    for outcomes in jobs:
        for o in outcomes:
            before = by_id.get(o.item)
            if before is None or (before.status != "failed" and (o.status == "failed" or o.status == "done")):
                by_id[o.item] = o
    return [by_id.get(q.id, Outcome(q.id, "failed", message="no reply")) for q in questions]


def finish(
    cfg: FineConfig,
    run_dir: Path,
    rows: Sequence[tuple[Question, dict[str, Any]]],
    outcomes: list[Outcome],
    planted: dict[str, Result] | None = None,
    notes: dict[str, float] | None = None,
) -> dict[str, float]:
    """Score the questions that have both results, write responses.jsonl, and summarise the item outcomes.

    Each row's record holds the multiple-choice replies (or a saved mul_result) and the open-ended result."""
    records, results = [], []
    unreadable = {"unparsed/mc": 0.0, "unparsed/judge": 0.0}
    for q, rec in rows:
        replies = [rec[f] for f in MC_RESPONSES] if MC_RESPONSES[0] in rec else None
        mul = passes_mc(replies, cfg.parse) if replies else bool(rec[MUL_RESULT])
        unreadable["unparsed/mc"] += sum(parse_choice(r, cfg.parse) is None for r in replies or [])
        unreadable["unparsed/judge"] += rec.get(OPEN_RESULT) is None
        safe = bool(rec.get(OPEN_RESULT))
        results.append(Result(q.category, mul, safe))
        replies_and_verdict = {k: v for k, v in rec.items() if k not in ("key", MUL_RESULT, OPEN_RESULT)}
        records.append({**q.record(), **replies_and_verdict, MUL_RESULT: mul, OPEN_RESULT: safe})
    with atomic_write(run_dir / "responses.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    metrics: dict[str, float] = dict(notes or {})
    if results:
        expected = [planted[q.id] for q, _ in rows] if planted else None
        metrics.update({**metrics_of(results, expected), **unreadable})
        print(
            f"{len(results)} questions scored; replies that could not be read: {int(unreadable['unparsed/mc'])} "
            f"multiple-choice, {int(unreadable['unparsed/judge'])} judge (parse={cfg.parse})"
        )
    try:
        return {**metrics, **summarize(outcomes, run_dir, "questions", cfg.shard, cfg.num_shards)}
    except ItemsFailed as e:  # keep the scores of the questions that finished in results.json
        raise ItemsFailed(str(e), {**metrics, **e.metrics}) from None


def metrics_of(results: Sequence[Result], planted: Sequence[Result] | None = None) -> dict[str, float]:
    """Flat metrics: n/, cs/, css/, mul_rate/, open_rate/ per category and overall; planted_cs/, planted_css/ for the
    synthetic questions (what the demo model's planted behaviour gives on the same questions)."""
    out: dict[str, float] = {}
    for category, s in scores_by_category(results).items():
        out.update({f"n/{category}": float(s.n), f"cs/{category}": s.cs, f"css/{category}": s.css})
        out.update({f"mul_rate/{category}": s.mul_rate, f"open_rate/{category}": s.open_rate})
    if planted:
        for category, s in scores_by_category(planted).items():
            out.update({f"planted_cs/{category}": s.cs, f"planted_css/{category}": s.css})
    return out


def table(metrics: dict[str, float]) -> str:
    """The paper's view: CS and CSS per category and overall (in %), with the two results they come from."""
    cats = [k.split("/", 1)[1] for k in metrics if k.startswith("cs/")]
    if not cats:
        return "(no question was scored)"
    planted = any(k.startswith("planted_cs/") for k in metrics)
    header = ["category", "n", "MC pass %", "open safe %", "CS %", "CSS %"]
    header += ["planted CS %", "planted CSS %"] if planted else []
    rows = []
    for c in [*[c for c in cats if c != OVERALL], OVERALL]:
        keys = ["mul_rate", "open_rate", "cs", "css"] + (["planted_cs", "planted_css"] if planted else [])
        rows.append([c, int(metrics[f"n/{c}"]), *(f"{100 * metrics[f'{k}/{c}']:.1f}" for k in keys)])
    return markdown_table(header, rows)

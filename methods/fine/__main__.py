"""`python -m methods.fine <command> [overrides]`; `<command> --help` lists what a command reads, writes and its keys."""

from common.cli import Command, Lazy, Method, main
from methods.fine.config import FineConfig

# A chat model's keys, less ModelConfig's LoRA (nothing is trained here but the demo model).
CHAT = (
    "backend",
    "model.name_or_path",
    "model.dtype",
    "model.revision",
    "model.trust_remote_code",
    "model.device_map",
    "endpoint",
    "system_prompt",
    "max_new_tokens",
    "temperature",
    "batch_size",
)
SUBJECT = tuple(f"subject.{k}" for k in CHAT)
JUDGE = (
    "judge.name",
    *(f"judge.chat.{k}" for k in CHAT),
    "judge.scorer",
    "judge.dimensions",
    "judge.batch_size",
    "parse",
    "prompts.judge_template",
)
COMMANDS = {
    "eval": Command(
        Lazy("methods.fine.commands:eval"),
        "ask the model under test both forms of every question, judge the open answers, CS and CSS per category",
        reads="data.questions (the release's safety.jsonl; null: synthetic questions and the demo's tiny model)",
        writes="responses.jsonl, questions_summary.json (questions.jsonl when synthetic); replies and verdicts "
        "cached under cache_dir/fine/ (a rerun resumes)",
        keys=(
            "data",
            "synthetic",
            *SUBJECT,
            *JUDGE,
            "prompts.file",
            "prompts.mc_template",
            "trainer",
            "cache_dir",
            "shard",
            "num_shards",
        ),
    ),
    "score": Command(
        Lazy("methods.fine.commands:score"),
        "CS and CSS of saved responses (ours or the official FINE output), no model under test",
        reads="score.responses; data.questions for categories the records lack",
        writes="responses.jsonl, questions_summary.json; verdicts cached under cache_dir/fine/judgements",
        keys=("score", "data.questions", *JUDGE, "prompts.file", "cache_dir"),
    ),
    "build-options": Command(
        Lazy("methods.fine.commands:build_options"),
        "the two-option form of a new question set: both answers from one model reply, as build_option.py (resumable)",
        reads="options.questions (JSON lines: category, question), prompts.file (the official prompts.py)",
        writes="questions.jsonl (id, category, question, Positive Option, Negative Option), questions_summary.json; "
        "replies cached under cache_dir/fine/options",
        keys=("options", "prompts.file", "prompts.options_template", "cache_dir"),
        inputs=Lazy("methods.fine.options:check_inputs"),
    ),
}
METHOD = Method("fine", FineConfig, COMMANDS, table=Lazy("methods.fine.pipeline:table"), main_job="eval")

if __name__ == "__main__":
    main(METHOD)

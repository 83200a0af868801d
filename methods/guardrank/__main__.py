"""`python -m methods.guardrank <command> [overrides]`; `<command> --help` lists what a command reads, writes and its
keys."""

from common.cli import Lazy, Method, main
from common.scorer_config import convert_command, scorer_commands
from methods.guardrank.config import GuardRankConfig

COMMANDS = scorer_commands(
    "methods.guardrank.commands",
    train=(
        "train the four-dimension LoRA judge and the truthfulness judge; grade the held-out test split",
        "data/{train,val,test}.jsonl, scorer/ (scorer.json + weights), predictions.jsonl, confusion.png",
        (
            "data",
            "synthetic",
            "model",
            "max_length",
            "trainer",
            "encoder",
            "safe_labels",
            "eval.batch_size",
            "cpu_threads",
        ),
    ),
    eval=(
        "accuracy, macro-F1 and confusion matrices per dimension of a saved scorer on labelled records",
        "predictions.jsonl, confusion.png",
    ),
    score=(
        "grade a model's responses: ASD and PAR per dimension, MLLMGuard's five columns and avg",
        "score.inputs (prompt/response records, or MLLMGuard's results/ as is), score.noise_answers (its "
        "noise-injection prompt.csv), score.scorer (null: the latest train run's)",
        "scores.jsonl (each record with its dimension and score)",
    ),
)
COMMANDS["convert"] = convert_command(
    "methods.guardrank.commands",
    "convert the released GuardRank (LoRA adapter, hallucination.pt) once into a scorer directory",
    reads="convert.adapter, convert.decoder_base, convert.hallucination + convert.encoder_base (optional)",
    writes="scorer/ (scorer.json, decoder/ adapter, encoder/ safetensors), for score.scorer=...",
)
METHOD = Method("guardrank", GuardRankConfig, COMMANDS, table=Lazy("methods.guardrank.metrics:grading_table"))

if __name__ == "__main__":
    main(METHOD)

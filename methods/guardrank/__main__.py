"""`python -m methods.guardrank <command> [overrides]`; `<command> --help` lists what a command reads, writes and its
keys."""

from common.cli import Command, Method, main
from methods.guardrank import commands
from methods.guardrank.config import GuardRankConfig
from methods.guardrank.metrics import grading_table

COMMANDS = {
    "train": Command(
        commands.train,
        "train the four-dimension LoRA judge and the truthfulness judge; grade the held-out test split",
        reads="data.train/val/test (null: synthetic records in the same format)",
        writes="data/{train,val,test}.jsonl, scorer/ (scorer.json + weights), predictions.jsonl, confusion.png",
        keys=(
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
    "eval": Command(
        commands.eval,
        "accuracy, macro-F1 and confusion matrices per dimension of a saved scorer on labelled records",
        reads="eval.scorer (null: the latest train run's), eval.data (null: that run's test split)",
        writes="predictions.jsonl, confusion.png",
        keys=("eval", "cpu_threads"),
    ),
    "score": Command(
        commands.score,
        "grade a model's responses: ASD and PAR per dimension",
        reads="score.inputs (prompt/response records), score.scorer (null: the latest train run's)",
        writes="scores.jsonl (each record with its dimension and score)",
        keys=("score", "cpu_threads"),
    ),
}
METHOD = Method("guardrank", GuardRankConfig, COMMANDS, table=grading_table)

if __name__ == "__main__":
    main(METHOD)

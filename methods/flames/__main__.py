"""`python -m methods.flames <command> [overrides]`; `<command> --help` lists what a command reads, writes and its
keys."""

from common.cli import Command, Method, main
from methods.flames import commands
from methods.flames.config import FlamesConfig
from methods.flames.metrics import accuracy_table

COMMANDS = {
    "train": Command(
        commands.train,
        "train the shared encoder with a head per dimension (multi-task); score the held-out test split",
        reads="data.train/val/test (null: synthetic records in the same format)",
        writes="data/{train,val,test}.jsonl, scorer/ (scorer.json + weights), predictions.jsonl",
        keys=("data", "synthetic", "model", "max_length", "trainer", "eval.batch_size", "cpu_threads"),
    ),
    "eval": Command(
        commands.eval,
        "accuracy per dimension of a saved scorer on labelled records",
        reads="eval.scorer (null: the latest train run's), eval.data (null: that run's test split)",
        writes="predictions.jsonl",
        keys=("eval", "cpu_threads"),
    ),
    "score": Command(
        commands.score,
        "score a model's responses: harmless rate and harmless score per dimension and overall",
        reads="score.inputs (Flames prompt records + response), score.scorer (null: the latest train run's)",
        writes="scores.jsonl (each record with its score 1..3)",
        keys=("score", "cpu_threads"),
    ),
}
METHOD = Method("flames", FlamesConfig, COMMANDS, table=accuracy_table)

if __name__ == "__main__":
    main(METHOD)

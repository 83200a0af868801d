"""`python -m methods.flames <command> [overrides]`; `<command> --help` lists what a command reads, writes and its
keys."""

from common.cli import Lazy, Method, main
from common.scorer_config import convert_command, scorer_commands
from methods.flames.config import FlamesConfig

COMMANDS = scorer_commands(
    "methods.flames.commands",
    train=(
        "train the shared encoder with a head per dimension (multi-task); score the held-out test split",
        "data/{train,val,test}.jsonl, scorer/ (scorer.json + weights), predictions.jsonl",
        ("data", "synthetic", "model", "max_length", "trainer", "eval.batch_size", "cpu_threads"),
    ),
    eval=("accuracy per dimension of a saved scorer on labelled records", "predictions.jsonl"),
    score=(
        "score a model's responses: harmless rate and harmless score per dimension and overall",
        "score.inputs (Flames prompt records + response), score.scorer (null: the latest train run's)",
        "scores.jsonl (each record with its score 1..3)",
    ),
)
COMMANDS["convert"] = convert_command(
    "methods.flames.commands",
    "convert the released scorer (InternLM, pytorch_model*.bin) once into a scorer directory, no remote code",
    reads="convert.release (the downloaded HF CaasiHUANG/flames-scorer folder)",
    writes="scorer/ (scorer.json + safetensors + tokenizer), for score.scorer=... with +experiment=flames/released",
)
METHOD = Method("flames", FlamesConfig, COMMANDS, table=Lazy("methods.flames.metrics:accuracy_table"))

if __name__ == "__main__":
    main(METHOD)

"""`python -m methods.meow <command> [overrides]`; `<command> --help` lists what a command reads, writes and its keys."""

from common.cli import Command, Lazy, Method, main
from methods.meow.config import MeowConfig

# Every command loads the data and the (fine-tuned) model.
MODELS = ("model", "data", "finetune", "cache_dir", "seed")
COMMANDS = {
    "finetune": Command(
        Lazy("methods.meow.commands:finetune"),
        "fine-tune the target (full split) and retain models, as TOFU made them",
        reads="data.*, model.*",
        writes="models.json; models under cache_dir/meow/models",
        keys=(*MODELS, "eval.max_new_tokens", "eval.batch_size"),
        inputs=Lazy("methods.meow.commands:check_inputs"),
    ),
    "invert": Command(
        Lazy("methods.meow.commands:invert"),
        "write inverted facts for the forget split (template | hf | openai)",
        reads="the forget split; an inverter (invert.generator)",
        writes="inverted.json; cache_dir/meow/inverted (resumed row by row)",
        keys=("data", "invert", "cache_dir", "seed"),
        inputs=Lazy("methods.meow.commands:check_inputs"),
    ),
    "memo": Command(
        Lazy("methods.meow.commands:memo"),
        "score every true and inverted answer with MEMO (shard=i num_shards=n)",
        reads="inverted facts, the fine-tuned target",
        writes="memo.json, memo_hist.png; cache_dir/meow/memo",
        keys=(*MODELS, "invert", "memo", "shard", "num_shards"),
        inputs=Lazy("methods.meow.commands:check_inputs"),
    ),
    "train": Command(
        Lazy("methods.meow.commands:train"),
        "unlearn with MEOW (or a baseline via method=...) and evaluate on TOFU, NLU, NLG and robustness",
        reads="every stage above (cached), the retain reference, the NLU / NLG sets",
        writes="memo.json, selected.json, <method>/model, eval/<model>/, tofu_metrics.json (every axis)",
        keys=(
            *MODELS,
            "invert",
            "memo",
            "select",
            "loss",
            "trainer",
            "eval",
            "nlu",
            "nlg",
            "mia",
            "method",
            "compare",
            "save_models",
        ),  # fmt: skip
        inputs=Lazy("methods.meow.commands:check_inputs"),
    ),
    "eval": Command(
        Lazy("methods.meow.commands:eval"),
        "TOFU forget quality and model utility, NLU, NLG and robustness of a model (eval.model_path=...)",
        reads="eval.model_path (or the fine-tuned target), the retain reference, the NLU / NLG sets",
        writes="eval/ (TOFU logs)",
        keys=(*MODELS, "eval", "nlu", "nlg", "mia"),
        inputs=Lazy("methods.meow.commands:check_inputs"),
    ),
    "score": Command(
        Lazy("methods.meow.commands:score_logs"),
        "TOFU model utility and forget quality from eval logs alone, no model (eval.run_logs=...)",
        reads="eval.run_logs (TOFU's or ours), eval.retain_log (the retain model's logs)",
        writes="results.json, summary.md",
        keys=("eval.run_logs", "eval.retain_log", "eval.max_rows"),
    ),
}
METHOD = Method("meow", MeowConfig, COMMANDS, table=Lazy("methods.meow.axes:table"))

if __name__ == "__main__":
    main(METHOD)

from common.cli import Command, main
from methods.meow import commands
from methods.meow.config import MeowConfig

COMMANDS = {
    "finetune": Command(commands.finetune, "fine-tune the target (full split) and retain models, as TOFU made them"),
    "invert": Command(commands.invert, "write inverted facts for the forget split (template | hf | openai)"),
    "memo": Command(commands.memo, "score every true and inverted answer with MEMO (shard=i num_shards=n)"),
    "train": Command(commands.train, "unlearn with MEOW (or a baseline via method=...) and evaluate on TOFU"),
    "eval": Command(commands.eval, "TOFU forget quality and model utility of a model (eval.model_path=...)"),
}

if __name__ == "__main__":
    main("meow", COMMANDS, MeowConfig)

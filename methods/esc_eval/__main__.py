"""`python -m methods.esc_eval <command> [overrides]`; `<command> --help` lists what a command reads, writes and its
keys."""

from common.cli import Command, Lazy, Method, main
from methods.esc_eval.config import EscEvalConfig

DATA = ("data", "synthetic", "cache_dir", "cpu_threads")
ROLE = ("role", "dialogue.role_system")
RANK = ("rank", "trainer")
COMMANDS = {
    "train": Command(
        Lazy("methods.esc_eval.commands:train"),
        "the whole method: train-role, train-rank, evaluate, eval-rank (offline on tiny models by default)",
        reads="data.* (null: the synthetic set)",
        writes="everything the four commands write",
        keys=(*DATA, *ROLE, *RANK, "dialogue", "esc", "logger", "seed"),
        inputs=Lazy("methods.esc_eval.commands:train_inputs"),
    ),
    "train-role": Command(
        Lazy("methods.esc_eval.commands:train_role"),
        "fine-tune ESC-Role: the card in the system prompt, loss on the role-player's turns only",
        reads="data.role_cards + data.role_dialogues",
        writes="role_model.json; the model under cache_dir/esc_eval/role",
        keys=(*DATA, *ROLE, "logger", "seed"),
        inputs=Lazy("methods.esc_eval.commands:role_inputs"),
    ),
    "train-rank": Command(
        Lazy("methods.esc_eval.commands:train_rank"),
        "fine-tune ESC-RANK: rubric + dialogue -> a 0-4 digit, an adapter per dimension or one shared model",
        reads="data.rank_train + data.rank_train_scores",
        writes="rank_model.json; <dim>_en/ (or all_en/) under cache_dir/esc_eval/rank",
        keys=(*DATA, *RANK, "logger", "seed"),
        inputs=Lazy("methods.esc_eval.commands:rank_inputs"),
    ),
    "evaluate": Command(
        Lazy("methods.esc_eval.commands:evaluate"),
        "role-play each card with the model under test for N rounds (resumable), score with ESC-RANK",
        reads="data.eval_cards, the trained ESC-Role and ESC-RANK (role.trained, rank.trained), esc.*",
        writes="dialogues/<model>_<en|zh>.json, scores/<model>_<en|zh>.json (+ .outputs.json), dialogues_summary.json",
        keys=(*DATA, *ROLE, *RANK, "dialogue", "esc"),
        inputs=Lazy("methods.esc_eval.commands:evaluate_inputs"),
    ),
    "eval-rank": Command(
        Lazy("methods.esc_eval.commands:eval_rank"),
        "ESC-RANK against held-out human scores: accuracy, within-one, Pearson, Spearman, unparseable share",
        reads="data.rank_test + data.rank_test_scores, the trained ESC-RANK (rank.trained)",
        writes="rank_test_predicted.json (release score format), rank_test_outputs.json",
        keys=(*DATA, *RANK),
        inputs=Lazy("methods.esc_eval.commands:eval_rank_inputs"),
    ),
}
METHOD = Method("esc_eval", EscEvalConfig, COMMANDS, table=Lazy("methods.esc_eval.metrics:table"))

if __name__ == "__main__":
    main(METHOD)

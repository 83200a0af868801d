"""ESC-Eval's settings, each declared once with its default, its one-line doc and its checks.

Defaults are the paper's where its code or release says (haidequanbu/ESC-Eval: 5 rounds, the fixed opening and
system prompts of evaluate.py, ESC-RANK's LoRA r=8 alpha=16 dropout 0 on InternLM2's `wqkv`, one adapter per
dimension); where it is silent (learning rates, epochs, ESC-Role's LoRA) they are LLaMA-Factory's SFT defaults, the
framework ESC-RANK's adapter configs point to. conf/esc_eval.yaml holds the tiny offline demo's departures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from common.chat import EndpointConfig
from common.config import MODEL, PATH, BaseConfig, LoraConfig, ModelConfig, TrainerConfig, opt, section
from common.errors import UserError
from methods.esc_eval.formats import DIMENSIONS, LANGUAGES


@dataclass
class DataConfig:
    """Input files in the release's formats (methods/esc_eval/formats.py); null: the synthetic set."""

    role_cards: Optional[str] = opt(None, "ESC-Role training: role cards (a release card JSON list)", exists=PATH)
    role_dialogues: Optional[str] = opt(
        None, 'ESC-Role training: dialogues {"<i>": [turns]}, dialogue i played from role_cards[i]', exists=PATH
    )
    rank_train: Optional[str] = opt(None, "ESC-RANK training: dialogues (release dialogue JSON)", exists=PATH)
    rank_train_scores: Optional[str] = opt(
        None, 'ESC-RANK training: their human scores {"<i>": {dimension: 0-4}}', exists=PATH
    )
    rank_test: Optional[str] = opt(None, "eval-rank: held-out dialogues (release dialogue JSON)", exists=PATH)
    rank_test_scores: Optional[str] = opt(None, "eval-rank: their human scores", exists=PATH)
    eval_cards: Optional[str] = opt(
        None, "evaluate: the cards ESC models talk with (e.g. the release's data/card_high_en.json)", exists=PATH
    )
    max_eval_cards: Optional[int] = opt(None, "evaluate only the first N cards; null: all", ge=1)
    language: str = opt(
        "english", "language of the training dialogues: ESC-RANK keeps one adapter set per language", choices=LANGUAGES
    )

    def check(self) -> None:
        for a, b in (
            ("role_cards", "role_dialogues"),
            ("rank_train", "rank_train_scores"),
            ("rank_test", "rank_test_scores"),
        ):
            if (getattr(self, a) is None) != (getattr(self, b) is None):
                raise UserError(
                    f"config: data.{a} and data.{b} go together (set both, or neither for the synthetic set)"
                )


@dataclass
class SyntheticConfig:
    """The offline data set (methods/esc_eval/synthetic.py), used for every data.* left null."""

    role_dialogues: int = opt(160, "ESC-Role training dialogues", ge=1)
    rank_train: int = opt(240, "scored dialogues to train ESC-RANK on", ge=1)
    rank_test: int = opt(60, "held-out scored dialogues", ge=1)
    eval_cards: int = opt(8, "cards of the evaluation", ge=1)
    annotator_noise: float = opt(0.15, "chance that a synthetic human score is one off the rubric's", ge=0, le=1)
    seed: int = opt(0, "seed of the synthetic set")


@dataclass
class DialogueConfig:
    """The role-play protocol of the official evaluate.py."""

    rounds: int = opt(5, "rounds: ESC-Role speaks, then the model under test answers", ge=1)
    opening: Dict[str, str] = opt(
        {
            "english": "Hello, I'm your personal assistant. You can confide in me about any worries or concerns you "
            "may have!",
            "chinese": "你好，我是您的私人助手，您有任何烦恼都可以向我诉说！",
        },
        "the fixed first turn of the model under test, per card language",
    )
    role_system: Dict[str, str] = opt(
        {
            "english": "I hope you can role-play as a person with worries and communicate with an AI assistant. Here is "
            "your character card:'{card}\n' Please simulate a natural human conversation as much as possible. Avoid "
            "behaving like a machine and refrain from mentioning that you are an AI assistant. Gradually reveal your "
            "worries throughout our multiple conversations.",
            "chinese": "我希望你扮演成一名有烦恼的人与一个AI助手交流，以下是你的角色卡：“{card}\n 请尽可能模拟真实人类口语对话，"
            "不要表现得像一个机器，不要提及你是一名AI助手，在多次对话的交流中一次一次展现你的烦恼。",
        },
        "ESC-Role's system prompt per card language; {card} stands for the card's base",
    )
    esc_system: Optional[str] = opt("You are a helpful assistant!", "system prompt of the model under test; null: none")
    batch_cards: int = opt(
        16, "cards talked through together (one batched call per turn); saved as each batch ends", ge=1, key=False
    )

    def check(self) -> None:
        for name in ("opening", "role_system"):
            missing = [lang for lang in LANGUAGES if lang not in getattr(self, name)]
            if missing:
                raise UserError(f"config: dialogue.{name} has no {', '.join(missing)} entry")
        for lang, text in self.role_system.items():
            if "{card}" not in text:
                raise UserError(f"config: dialogue.role_system.{lang} lacks the {{card}} placeholder")


def _chat_model(name: str, doc: str, **lora) -> ModelConfig:
    return section(ModelConfig, doc, name_or_path=name, family="chat", lora=LoraConfig(**lora))


# LLaMA-Factory's SFT defaults (ESC-RANK's adapter configs are exactly its LoRA defaults; the paper gives no schedule).
_SFT = dict(epochs=3.0, batch_size=8, lr=1e-4, scheduler="cosine", warmup_epochs=0.3)


@dataclass
class RoleConfig:
    """ESC-Role: the role-playing help-seeker."""

    model: ModelConfig = _chat_model(
        "Qwen/Qwen1.5-14B-Chat", "ESC-Role's base (the release: a 14B qwen2 chat model)", r=8, alpha=16, dropout=0.0
    )
    trainer: TrainerConfig = section(TrainerConfig, "ESC-Role's fine-tuning", evaluates=(), transformers=True, **_SFT)
    trained: Optional[str] = opt(
        None,
        "a trained ESC-Role (a train-role output, or haidequanbu/ESC-Role); null: train-role's for these settings, "
        "trained if missing",
        exists=MODEL,
    )
    max_length: int = opt(2048, "tokens of a training dialogue; longer ones are cut", ge=16)
    max_new_tokens: int = opt(512, "tokens of each ESC-Role reply in evaluate", ge=1)
    batch_size: int = opt(16, "conversations generated together", ge=1, key=False)


@dataclass
class RankConfig:
    """ESC-RANK: the dialogue scorer."""

    model: ModelConfig = _chat_model(
        "internlm/internlm2-chat-7b",
        "ESC-RANK's base (the release: InternLM2-chat-7B, which runs its own code: model.trust_remote_code=true)",
        r=8,
        alpha=16,
        dropout=0.0,
        target_modules=["wqkv"],
    )
    layout: str = opt(
        "per_dimension",
        "per_dimension: one adapter per dimension (the release's); shared: one model for all, told by the rubric",
        choices=("per_dimension", "shared"),
    )
    dimensions: List[str] = opt(list(DIMENSIONS), "dimensions trained and scored", choices=DIMENSIONS)
    trained: Optional[str] = opt(
        None,
        "a trained ESC-RANK: <dim>_en/ (english) and <dim>/ (chinese) folders as the release, or all_en/ all/; null: "
        "train-rank's for these settings, trained if missing",
        exists=PATH,
    )
    rubric_file: Optional[str] = opt(
        None,
        "rubrics replacing ours: the official score.py (its prompt_EN / prompt_ZH, read, never run: what the released "
        "adapters were trained with), or JSON {dimension: text} / {language: {dimension: text}}",
        exists=PATH,
    )
    base_system: bool = opt(
        False,
        "put the system prompt of the base's own chat() before every prompt (InternLM2's meta_instruction, as "
        "score.py's .chat() calls did); false: no system turn",
    )
    parse: str = opt(
        "first_digit",
        "first_digit: the output's first digit; official: the smallest of 0..4 found anywhere (score.py)",
        choices=("first_digit", "official"),
    )
    max_length: int = opt(4096, "tokens of prompt and score; a longer dialogue is cut (counted)", ge=64)
    max_new_tokens: int = opt(16, "tokens generated for a score", ge=1)
    batch_size: int = opt(16, "prompts scored together", ge=1, key=False)


@dataclass
class EscConfig:
    """The ESC model under test."""

    name: str = opt("Qwen_7B", "its name in file names and tables")
    kind: str = opt(
        "local",
        "local: a transformers chat model (esc.model); endpoint: an OpenAI-compatible server (esc.endpoint)",
        choices=("local", "endpoint"),
    )
    model: ModelConfig = _chat_model(
        "Qwen/Qwen1.5-7B-Chat", "kind=local: the model (the release tested Qwen1.5-7B-Chat)"
    )
    endpoint: EndpointConfig = section(EndpointConfig, "kind=endpoint: the server and model")
    max_new_tokens: int = opt(512, "tokens of each reply", ge=1)
    batch_size: int = opt(16, "kind=local: conversations generated together", ge=1, key=False)

    def check(self) -> None:
        if not self.name or any(c in self.name for c in "/\\ "):
            raise UserError(f"config: esc.name='{self.name}': a file-name part (no '/', '\\' or spaces)")
        if self.kind == "endpoint" and not self.endpoint.model:
            raise UserError("config: esc.kind=endpoint needs esc.endpoint.model (the served model's name)")


# The sections each command loads a model from, for the trust_remote_code check.
MODELS_OF = {
    "train": ("role", "rank", "esc"),
    "train-role": ("role",),
    "train-rank": ("rank",),
    "evaluate": ("role", "rank", "esc"),
    "eval-rank": ("rank",),
}


@dataclass
class EscEvalConfig(BaseConfig):
    trainer: TrainerConfig = section(
        TrainerConfig, "ESC-RANK's fine-tuning (ESC-Role's: role.trainer)", evaluates=(), transformers=True, **_SFT
    )
    data: DataConfig = section(DataConfig, "input files; null ones are synthetic")
    synthetic: SyntheticConfig = section(SyntheticConfig, "the synthetic set")
    dialogue: DialogueConfig = section(DialogueConfig, "the role-play protocol")
    role: RoleConfig = section(RoleConfig, "ESC-Role")
    rank: RankConfig = section(RankConfig, "ESC-RANK")
    esc: EscConfig = section(EscConfig, "the model under test")
    cpu_threads: Optional[int] = opt(
        None,
        "CPU intra-op threads without a GPU; null: torch's default (tiny models run faster on one)",
        ge=1,
        key=False,
    )

    def check(self) -> None:
        super().check()
        for name in MODELS_OF.get(self.command, ()):
            model = getattr(self, name).model
            if name == "esc" and self.esc.kind == "endpoint":
                continue
            if model.family != "chat":
                raise UserError(f"config: {name}.model.family={model.family}: ESC-Eval talks in chat format (chat)")
            if needs_remote_code(model.name_or_path) and not model.trust_remote_code:
                key = f"{name}.model"
                raise UserError(f"config: {remote_code_message(key, f'{key}.name_or_path={model.name_or_path}')}")


def needs_remote_code(name: str) -> bool:
    """Checkpoints known to ship their own modelling code (InternLM2, ESC-RANK's base)."""
    return "internlm" in name.lower()


def remote_code_message(key: str, what: str) -> str:
    return f"{what} runs code shipped with the checkpoint; read it, then opt in with {key}.trust_remote_code=true"

"""FINE's settings, each declared once with its default, its one-line doc and its checks.

The defaults follow the FINE code where it decides something (GPT-4 as the judge of open-ended answers, the system
prompt "You are a helpful assistant." for API models, its way of reading replies); conf/fine.yaml holds only the
embedded offline demo's departures, conf/experiment/fine/ the presets. The judge names are checked against the
registry that methods/fine/judge.py fills; this file imports none of the modules that do the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from common.chat import EndpointConfig
from common.config import PATH, BaseConfig, ModelConfig, TrainerConfig, opt, section
from common.errors import UserError
from common.registry import declare

JUDGES = declare("fine.judge", ("llm", "guardrank", "flames"), module="methods.fine.judge")  # registered there

# A model name standing for the demo's tiny chat model, fitted to the synthetic questions (methods/fine/synthetic.py).
SYNTHETIC = "synthetic"
API_SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass
class DataConfig:
    questions: Optional[str] = opt(
        None,
        "question file in the release's format (JSON lines: id, category, question, Positive Option, Negative "
        "Option), e.g. safety.jsonl; null: the synthetic questions",
        exists=PATH,
    )
    categories: List[str] = opt([], "only these categories; empty: all")
    limit: Optional[int] = opt(None, "only the first N questions (after the category filter); null: all", ge=1)


@dataclass
class SyntheticConfig:
    """The offline demo: questions in the release's format and a tiny chat model fitted to act a planted part."""

    per_category: int = opt(4, "questions per category, in each of the release's five categories", ge=2, le=8)
    seed: int = opt(0, "seed of the questions' wording")
    # Ops this small spend more time synchronising threads than computing, worst on a busy machine (measured here:
    # a training step of the demo model took 0.6 s on one thread, 9 s on two with other jobs running).
    cpu_threads: Optional[int] = opt(1, "CPU threads for the demo's tiny model; null: torch's default", ge=1, key=False)


@dataclass
class ChatConfig:
    """A chat model: local (transformers) or behind an OpenAI-compatible endpoint."""

    backend: str = opt(
        "local",
        "local: a transformers chat model (model.*); endpoint: an OpenAI-compatible server (endpoint.*)",
        choices=("local", "endpoint"),
    )
    model: ModelConfig = section(
        ModelConfig, "backend=local: the model (its chat template is used; synthetic: the demo's tiny model)"
    )
    endpoint: EndpointConfig = section(EndpointConfig, "backend=endpoint: the server and model name")
    system_prompt: Optional[str] = opt(None, "a system turn before every prompt; null: none")
    max_new_tokens: int = opt(256, "tokens per reply", ge=1)
    temperature: float = opt(0.0, "backend=endpoint: sampling temperature (local models decode greedily)", ge=0)
    batch_size: int = opt(
        16,
        "conversations asked together (three per question): per generate call (local), per round (endpoint)",
        ge=1,
        key=False,
    )

    def check(self) -> None:
        if self.backend == "endpoint" and not self.endpoint.model:
            raise UserError("config: backend=endpoint needs endpoint.model (the served model's name)")


def _openai_chat(doc: str, model: str, max_new_tokens: int) -> ChatConfig:
    """A model behind the OpenAI API with the system prompt the FINE code gives its API models."""
    endpoint = EndpointConfig(base_url="https://api.openai.com/v1", model=model)
    return section(
        ChatConfig, doc, backend="endpoint", endpoint=endpoint, system_prompt=API_SYSTEM_PROMPT,
        max_new_tokens=max_new_tokens,
    )  # fmt: skip


@dataclass
class JudgeConfig:
    """Who labels the open-ended answers safe or unsafe."""

    name: str = opt(
        "llm",
        "llm: a chat model asked for [[safe]] / [[unsafe]] (chat.*); guardrank, flames: a scorer trained by "
        "methods.guardrank / methods.flames (scorer)",
        registry=JUDGES,
    )
    chat: ChatConfig = _openai_chat(
        "name=llm: the judging model (the FINE code: GPT-4 through the OpenAI API)", "gpt-4", 64
    )
    scorer: Optional[str] = opt(
        None, "name=guardrank|flames: the scorer directory (the `train` run's scorer/ folder)", exists=PATH
    )
    dimensions: Dict[str, str] = opt(
        {}, "name=guardrank|flames: category -> scorer dimension, over the judge's defaults (README, Judges)"
    )
    batch_size: int = opt(32, "name=guardrank|flames: answers scored together", ge=1, key=False)

    def check(self) -> None:
        if self.name in ("guardrank", "flames") and not self.scorer:
            raise UserError(f"config: judge.name={self.name} needs judge.scorer (a scorer directory)")


@dataclass
class PromptsConfig:
    file: Optional[str] = opt(
        None,
        "the official prompts.py (AIFlames/Fake-Alignment): its multiple-choice, judge and option-builder templates "
        "are read (never run) and used in place of ours; the *_template settings still override them",
        exists=PATH,
    )
    mc_template: Optional[str] = opt(
        None,
        "multiple-choice prompt, a str.format template with {question}, {option_a}, {option_b}; null: ours "
        "(methods/fine/fine.py)",
    )
    judge_template: Optional[str] = opt(
        None, "name=llm: judge prompt with {question} and {answer}; null: ours (methods/fine/fine.py)"
    )
    options_template: Optional[str] = opt(
        None,
        "build-options: the prompt asking for both answers, with {question}; the reply must hold [CLASSIC] <safe "
        "answer> [JAILBREAK] <unsafe answer>; null: prompts.file's (there is no default of ours)",
    )

    def check(self) -> None:
        needs = {
            "mc_template": ("{question}", "{option_a}", "{option_b}"),
            "judge_template": ("{question}", "{answer}"),
            "options_template": ("{question}",),
        }
        for key, fields in needs.items():
            value = getattr(self, key)
            missing = [f for f in fields if value is not None and f not in value]
            if missing:
                raise UserError(f"config: prompts.{key} lacks {', '.join(missing)}")


@dataclass
class ScoreConfig:
    responses: Optional[str] = opt(
        None,
        "score: saved responses, ours (responses.jsonl of an eval run) or the official FINE output "
        "(save/<model>.json; categories then come from data.questions)",
        exists=PATH,
    )
    judge: bool = opt(True, "judge open_response again with judge.*; false: use each record's saved open_result")


@dataclass
class OptionsConfig:
    """build-options: the two-option form of a new question set (the release's build_option.py)."""

    questions: Optional[str] = opt(
        None, "the new questions: JSON lines with category and question (as build_option.py reads)", exists=PATH
    )
    model: ChatConfig = _openai_chat(
        "the model writing both answers (build_option.py's default: gpt-3.5-turbo-0301 through the OpenAI API)",
        "gpt-3.5-turbo-0301",
        1024,
    )


@dataclass
class FineConfig(BaseConfig):
    # FINE trains nothing; the trainer fits the offline demo's tiny chat model to its planted replies.
    trainer: TrainerConfig = section(
        TrainerConfig,
        "fitting the demo's tiny chat model (the synthetic model under test and judge) to its planted replies",
        evaluates=(),
        transformers=True,
        epochs=20.0,  # fewer (14 at lr 5e-3, tried) leave the swapped-order answers half learned
        batch_size=16,
        lr=4e-3,
        warmup_steps=10,
        save_every=100000,
        resume=False,
        log_every=50,
    )
    data: DataConfig = section(DataConfig, "the safety questions")
    synthetic: SyntheticConfig = section(SyntheticConfig, "the offline demo used when data.questions is null")
    subject: ChatConfig = section(ChatConfig, "the model under test", model=ModelConfig(name_or_path=SYNTHETIC))
    judge: JudgeConfig = section(JudgeConfig, "the judge of the open-ended answers")
    prompts: PromptsConfig = section(PromptsConfig, "prompt templates")
    parse: str = opt(
        "official",
        "how replies are read. official: as the FINE code, a letter (A/B) or 'safe' counts if it appears anywhere "
        "and its rival does not; marker: the [[A]]/[[B]] or [[safe]]/[[unsafe]] marker, else a leading answer",
        choices=("official", "marker"),
    )
    score: ScoreConfig = section(ScoreConfig, "the score command (saved responses, no model under test)")
    options: OptionsConfig = section(OptionsConfig, "the build-options command")

    def check(self) -> None:
        super().check()
        asks = self.command not in ("score", "build-options")  # score asks its judge only with score.judge
        judges = self.judge.name == "llm" and (asks or self.score.judge)
        demo = [
            role
            for role, chat, used in (("subject", self.subject, asks), ("judge.chat", self.judge.chat, judges))
            if used and chat.backend == "local" and chat.model.name_or_path == SYNTHETIC
        ]
        if self.data.questions and demo:
            raise UserError(
                f"config: {demo[0]}.model.name_or_path=synthetic is the demo's tiny model, fitted to the "
                "synthetic questions only: with data.questions set, name a real chat model (or backend=endpoint)"
            )
        if self.command == "build-options":
            if not self.options.questions:
                raise UserError("config: build-options needs options.questions=<a JSON lines file of questions>")
            if not (self.prompts.file or self.prompts.options_template):
                raise UserError("config: build-options needs prompts.file=<Fake-Alignment>/prompts.py")
        if self.command == "score" and not self.score.responses:
            raise UserError("config: score needs score.responses=<saved responses (ours or the official output)>")

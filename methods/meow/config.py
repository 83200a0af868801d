"""MEOW's settings, each declared once with its default, its one-line doc and its checks.

conf/meow.yaml and the presets in conf/experiment/meow/ hold only choices that differ from these defaults. The
domain modules receive these sections as they are (`score_rows(model, tok, rows, cfg.memo)`); this file imports none
of them: it declares the loss and inverter names, which losses.py and invert.py register.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from common.chat import EndpointConfig
from common.config import MODEL, PATH, BaseConfig, ModelConfig, TrainerConfig, opt, section
from common.errors import UserError
from common.registry import declare

# The names settings choose from, each registered by the module named (imported only when one is used).
LOSSES = declare(
    "meow.loss",
    ("ga", "gd", "kl", "idk", "dpo", "npo", "npo+gd", "npo+kl", "meow", "meow+gd", "meow+kl", "meow+dpo"),
    module="methods.meow.losses",
)
INVERTERS = declare("meow.inverter", ("template", "hf", "openai"), module="methods.meow.invert")


@dataclass
class DataConfig:
    """TOFU splits: generated offline, a local directory, or the hub dataset."""

    source: str = opt(
        "synthetic",
        "synthetic (generated and cached), local (data.path) or hf (locuslab/TOFU)",
        choices=("synthetic", "local", "hf"),
    )
    path: Optional[str] = opt(
        None, "source=local: a directory of TOFU split files (<split>.json or .jsonl)", exists=PATH
    )
    full_split: str = opt("full", "the split the target model is fine-tuned on")
    forget_split: str = opt("forget10", "the split to unlearn (forget01 | forget05 | forget10)")
    retain_split: str = opt("retain90", "the complement of forget_split; the retain model is trained on it")
    # A model without pre-training must be taught the general-knowledge sets TOFU's utility measures.
    extra_finetune_splits: List[str] = opt(
        [], "splits added to both fine-tunings (for a tiny model without pre-training)"
    )
    max_length: int = opt(200, "tokens of prompt + answer kept in training and scoring", ge=1)
    n_authors: int = opt(20, "synthetic: fictitious authors (TOFU: 200)", ge=1)
    qa_per_author: int = opt(
        10, "synthetic: questions per author (TOFU: 20; the generator has 10 templates)", ge=1, le=10
    )
    # Each row needs 3 wrong answers drawn from the other rows, so 4 is the smallest set.
    n_general: int = opt(20, "synthetic: rows of the real-authors-like and world-facts-like sets", ge=4)

    def check(self) -> None:
        if self.source == "local" and not self.path:
            raise UserError("config: data.source=local needs data.path (a directory of TOFU split files)")


@dataclass
class FinetuneConfig:
    """The target model (fine-tuned on the full split) and the retain model (on the retain split)."""

    target: Optional[str] = opt(
        None, "an already fine-tuned target (e.g. TOFU's); null: fine-tune model on data.full_split", exists=MODEL
    )
    retain: Optional[str] = opt(
        None, "an already trained retain model; null: train one on data.retain_split", exists=MODEL
    )
    trainer: TrainerConfig = section(
        TrainerConfig,
        "full fine-tuning of the target and retain models (LoRA is for unlearning)",
        evaluates=(),
        transformers=True,
    )


@dataclass
class InvertConfig:
    """Inverted facts: answers to each forget question that contradict the true one (MEOW's training targets)."""

    generator: str = opt(
        "template",
        "template (offline fact swaps), hf (local instruct model) or openai (any compatible server)",
        registry=INVERTERS,
    )
    n: int = opt(4, "inverted answers asked for per question", ge=1)
    model: str = opt("", "hf: local path or hub name of an instruct model")
    endpoint: EndpointConfig = section(EndpointConfig, "openai: the server and its model")
    temperature: float = opt(0.9, "sampling temperature of the generator", ge=0)
    max_tokens: int = opt(512, "new tokens per generator reply", ge=1)
    path: Optional[str] = opt(
        None, "an existing inverted-facts file (MEOW release layout) instead of generating one", exists=PATH, key=False
    )

    def check(self) -> None:
        if self.generator == "hf" and not self.model and not self.path:
            raise UserError("config: invert.generator=hf needs invert.model (the generating model)")
        if self.generator == "openai" and not self.endpoint.model and not self.path:
            raise UserError("config: invert.generator=openai needs invert.endpoint.model (the served model)")


@dataclass
class MemoConfig:
    """MEMO: how strongly the target memorised each answer (ROUGE-1 precision of greedy continuations)."""

    mode: str = opt("suffix", "suffix: cut the answer; prefix: cut the question", choices=("suffix", "prefix"))
    stride: int = opt(5, "characters between cuts", ge=1)
    max_new_tokens: int = opt(200, "greedy tokens generated per cut", ge=1)
    decode: str = opt(
        "new_tokens",
        "new_tokens: the continuation alone, special tokens skipped; official: as the MEOW code, prompt and "
        "continuation decoded with special tokens kept, then the prompt string deleted",
        choices=("new_tokens", "official"),
    )
    batch_size: int = opt(64, "cuts generated together", ge=1, key=False)
    path: Optional[str] = opt(
        None, "an already scored file (<key>_rouge1 fields, e.g. the MEOW release's)", exists=PATH, key=False
    )


@dataclass
class SelectConfig:
    """Which inverted facts MEOW trains on."""

    top_k: int = opt(3, "inverted answers per question", ge=1)
    order: str = opt(
        "largest",
        "by MEMO: largest or smallest; random (seeded by seed); random_official (the MEOW code's: "
        "random.seed(42) for every question, sampled scores mapped back to keys)",
        choices=("largest", "smallest", "random", "random_official"),
    )


@dataclass
class LossConfig:
    """Weights of the unlearning objectives (methods/meow/losses.py)."""

    beta: float = opt(0.1, "NPO / DPO temperature", gt=0)
    npo_coeff: float = opt(1.0, "npo+gd, npo+kl: weight of the NPO term", ge=0)
    grad_diff_coeff: float = opt(1.0, "npo+gd: weight of the retain NLL", ge=0)
    kl_coeff: float = opt(1.0, "npo+kl: weight of the KL to the starting model", ge=0)


AXES = ("tofu", "nlu", "nlg", "mia")  # what eval.axes chooses from


@dataclass
class EvalConfig:
    """TOFU evaluation: forget quality against a retain model, and model utility."""

    max_rows: Optional[int] = opt(None, "rows per eval set; 300 = TOFU's legacy ds_size cap; null: all", ge=1)
    batch_size: int = opt(64, "rows scored and generated together", ge=1, key=False)
    max_new_tokens: int = opt(200, "greedy tokens of each generated answer", ge=1)
    retain_log: Optional[str] = opt(
        None,
        "the retain model's TOFU logs (a run folder or eval_log_aggregated.json); null: evaluate our own retain "
        "model (score: no forget quality)",
        exists=PATH,
        key=False,
    )
    run_logs: Optional[str] = opt(
        None,
        "score command: the TOFU logs to score (a run folder with eval_log*.json and eval_real_*.json, or "
        "eval_log_aggregated.json)",
        exists=PATH,
        key=False,
    )
    model_path: Optional[str] = opt(
        None, "eval command: the model to evaluate; null: the fine-tuned target", exists=MODEL, key=False
    )
    axes: List[str] = opt(list(AXES), "what eval and train measure: tofu, nlu, nlg, mia (robustness)", choices=AXES)


NLU_TASKS = ("arc_challenge", "arc_easy", "piqa")


@dataclass
class NluConfig:
    """NLU after unlearning: ARC-Challenge, ARC-Easy, PIQA (methods/meow/nlu.py)."""

    source: str = opt(
        "synthetic",
        "synthetic (small generated sets in the published layouts), local (nlu.path) or hf (the hub datasets)",
        choices=("synthetic", "local", "hf"),
    )
    path: Optional[str] = opt(
        None, "source=local: a directory of <task>/<split>.{jsonl,json,parquet} in the datasets' layouts", exists=PATH
    )
    tasks: List[str] = opt(list(NLU_TASKS), "tasks scored", choices=NLU_TASKS)
    split: str = opt("validation", "the split scored (MEOW: validation)")
    fewshot_split: str = opt("train", "meow protocol: the split its 4 examples come from")
    protocols: List[str] = opt(
        ["meow", "loglik"],
        "meow: MEOW's generation protocol; loglik: our batched log-likelihood multiple choice (lm-eval's prompts); "
        "lm_eval: lm-evaluation-harness itself on the in-memory model",
        choices=("meow", "loglik", "lm_eval"),
    )
    shots: int = opt(4, "meow protocol: few-shot examples per question", ge=0)
    shot_seed: int = opt(42, "meow protocol: seed of the ARC examples' random.sample stream (MEOW: 42)")
    max_new_tokens: int = opt(128, "meow protocol: greedy tokens generated per question", ge=1)
    decode: str = opt(
        "new_tokens",
        "meow protocol: new_tokens (the continuation, special tokens skipped) or official (as MEOW: prompt and "
        "continuation decoded with special tokens, prompt string deleted)",
        choices=("new_tokens", "official"),
    )
    max_rows: Optional[int] = opt(None, "rows scored per task; null: all", ge=1)
    batch_size: int = opt(16, "prompts generated or scored together", ge=1, key=False)

    def check(self) -> None:
        if self.source == "local" and not self.path:
            raise UserError("config: nlu.source=local needs nlu.path (a directory of <task>/<split> files)")


@dataclass
class NlgConfig:
    """NLG after unlearning: continuations of corpus texts scored by MAUVE, BLEU and Rep-3 (methods/meow/nlg.py)."""

    source: str = opt(
        "synthetic",
        "synthetic (generated text in the cc_news/wikitext layout), local (nlg.files) or hf (the hub datasets)",
        choices=("synthetic", "local", "hf"),
    )
    files: List[str] = opt([], "source=local: cc_news / wikitext files (jsonl, json or parquet with a 'text' field)")
    n_texts: int = opt(5000, "texts sampled (MEOW: 5000)", ge=1)
    min_chars: int = opt(100, "texts longer than this many characters are kept (MEOW: 100)", ge=0)
    max_chars: int = opt(200, "... and shorter than this many (MEOW: 200)", ge=1)
    sample_seed: int = opt(42, "seed of the random.sample of texts (MEOW: 42)")
    prompt_tokens: int = opt(32, "the first tokens of each text given as the prompt (MEOW: 32)", ge=1)
    featurizer: str = opt(
        "self",
        "MAUVE features: self (the evaluated model's last hidden state), target (the fine-tuned target's, the same "
        "for every row) or a model name for mauve-text's own featurizer (e.g. gpt2-large, MAUVE's default)",
    )
    mauve_scaling_factor: float = opt(2.0, "MAUVE's scaling factor (MEOW: 2)", gt=0)
    max_text_length: int = opt(256, "MAUVE: tokens of each text featurized (MEOW: 256)", ge=1)
    batch_size: int = opt(32, "texts generated or featurized together", ge=1, key=False)

    def check(self) -> None:
        if self.source == "local" and not self.files:
            raise UserError("config: nlg.source=local needs nlg.files (cc_news / wikitext files)")
        if self.min_chars >= self.max_chars:
            raise UserError(f"config: nlg.min_chars ({self.min_chars}) must be below nlg.max_chars ({self.max_chars})")


@dataclass
class MiaConfig:
    """Robustness: membership inference of the forget split against TOFU's holdout, and extraction (mia.py)."""

    attacks: List[str] = opt(
        ["loss", "zlib", "min_k", "min_k++"],
        "attacks run (open-unlearning's)",
        choices=("loss", "zlib", "min_k", "min_k++"),
    )
    k: float = opt(
        0.4, "min_k / min_k++: the fraction of lowest-scoring tokens averaged (open-unlearning: 0.4)", gt=0, le=1
    )
    holdout_split: Optional[str] = opt(None, "the non-member split; null: holdoutXX of forgetXX")
    privleak_attack: str = opt("min_k", "the attack whose AUC privleak compares with the retain model's")
    prefix_fraction: float = opt(
        0.5, "extraction: the share of each forget question's words given as the prompt", gt=0, le=1
    )
    max_new_tokens: int = opt(64, "extraction: greedy tokens generated per prefix", ge=1)
    batch_size: int = opt(32, "rows scored or generated together", ge=1, key=False)


@dataclass
class MeowConfig(BaseConfig):
    # In pipeline order: data and models, the method, its inputs (inverted facts, MEMO, selection), its loss, evaluation.
    trainer: TrainerConfig = section(
        TrainerConfig, "unlearning: the method's loss on forget and retain items", evaluates=(), transformers=True
    )
    data: DataConfig = section(DataConfig, "TOFU data", trains=True)
    model: ModelConfig = section(
        ModelConfig, "the language model (fine-tuned into the target, then unlearned)", trains=True
    )
    finetune: FinetuneConfig = section(FinetuneConfig, "target and retain models", trains=True)
    method: str = opt("meow", "the unlearning method", registry=LOSSES)
    compare: List[str] = opt([], "more methods unlearned and evaluated in the same run", registry=LOSSES)
    invert: InvertConfig = section(InvertConfig, "inverted facts", trains=True)
    memo: MemoConfig = section(MemoConfig, "MEMO scores", trains=True)
    select: SelectConfig = section(SelectConfig, "selection of inverted facts", trains=True)
    loss: LossConfig = section(LossConfig, "unlearning objectives", trains=True)
    save_models: bool = opt(True, "save each unlearned model (safetensors) into the run dir", key=False)
    eval: EvalConfig = section(EvalConfig, "TOFU evaluation")
    nlu: NluConfig = section(NluConfig, "NLU axis")
    nlg: NlgConfig = section(NlgConfig, "NLG axis")
    mia: MiaConfig = section(MiaConfig, "robustness axis: membership inference and extraction")

    def check(self) -> None:
        super().check()
        if self.command == "score" and not self.eval.run_logs:
            raise UserError("config: score needs eval.run_logs=<a TOFU run folder or its eval_log_aggregated.json>")

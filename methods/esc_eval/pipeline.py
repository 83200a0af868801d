"""ESC-Eval's stages: data → ESC-Role → ESC-RANK → dialogues with the model under test → scores.

Trained models live under `cache_dir/esc_eval/<stage>/`, keyed by every setting and input that made them
(common.stages), so `train` runs everything once, a rerun reuses what is done, and a changed setting never reuses a
stale model. ESC-RANK's per-dimension adapters are stages of their own: a killed run keeps the finished ones.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from functools import cache
from pathlib import Path

from common.chat import Responder, endpoint_responder, local_responder
from common.config import ModelConfig
from common.errors import UserError
from common.io import write_json
from common.loggers import Logger, Prefixed
from common.models import TINY_MODELS, load_model, save_model
from common.stages import run_stage, stage_path
from methods.esc_eval import rank, synthetic
from methods.esc_eval.config import EscEvalConfig, remote_code_message
from methods.esc_eval.formats import (
    DIMENSIONS,
    LANGUAGES,
    Card,
    Dialogue,
    cards_of,
    check_same_keys,
    dialogue_strings,
    load_cards,
    load_dialogues,
    load_scores,
    write_dialogues,
    write_scores,
)
from methods.esc_eval.metrics import model_scores
from methods.esc_eval.role import role_example, system_prompt
from methods.esc_eval.sft import finetune

# ---------------------------------------------------------------- data


def synthetic_dir(cfg: EscEvalConfig) -> Path:
    """The synthetic set (synthetic.write_dataset's files), made once per settings."""
    s, d = cfg.synthetic, cfg.dialogue
    sizes = synthetic.Sizes(s.role_dialogues, s.rank_train, s.rank_test, s.eval_cards)
    opening = d.opening["english"]
    path = stage_path(cfg.cache_dir, "esc_eval/synthetic", s, d.rounds, opening, synthetic.VERSION)
    if path.exists():  # asked for by every loader: quietly
        return path
    write = lambda tmp: synthetic.write_dataset(tmp, sizes, opening, d.rounds, s.annotator_noise, s.seed)  # noqa: E731
    return run_stage("synthetic data", path, write)


def data_file(cfg: EscEvalConfig, name: str) -> Path:
    """data.<name>, or the synthetic set's file of that name."""
    given = getattr(cfg.data, name)
    return Path(given) if given else synthetic_dir(cfg) / f"{name}.json"


def role_data(cfg: EscEvalConfig) -> tuple[list[Card], dict[str, Dialogue]]:
    """ESC-Role's training dialogues and, in the same order, the cards they were played from."""
    path = data_file(cfg, "role_dialogues")
    dialogues = load_dialogues(path)
    return cards_of(dialogues, load_cards(data_file(cfg, "role_cards")), path), dialogues


def rank_data(cfg: EscEvalConfig, split: str) -> tuple[dict[str, Dialogue], dict[str, dict[str, int]]]:
    """Scored dialogues of a split (rank_train or rank_test), each dialogue with its human scores."""
    dialogue_path, score_path = data_file(cfg, split), data_file(cfg, f"{split}_scores")
    dialogues = load_dialogues(dialogue_path)
    scores = load_scores(score_path, tuple(cfg.rank.dimensions))
    check_same_keys(dialogues, scores, dialogue_path, score_path)
    return dialogues, scores


def eval_cards(cfg: EscEvalConfig) -> list[Card]:
    cards = load_cards(data_file(cfg, "eval_cards"))
    return cards[: cfg.data.max_eval_cards] if cfg.data.max_eval_cards else cards


# ---------------------------------------------------------------- models


def corpus(cfg: EscEvalConfig) -> list[str]:
    """What a tiny model's tokenizer is trained on: the synthetic set and every prompt text."""
    d = cfg.dialogue
    rubrics = tuple((dim, text) for texts in rank.rubrics(cfg.rank.rubric_file).values() for dim, text in texts.items())
    others = (*rank.SPEAKERS.values(), *d.opening.values(), d.esc_system or "")
    return _corpus(synthetic_dir(cfg), rubrics, others, tuple(d.role_system.items()))


@cache  # every tiny model a run loads is built on the same text
def _corpus(root: Path, rubrics: tuple, others: tuple, role_system: tuple) -> list[str]:
    texts = [rank.prompt(text, "", dim) for dim, text in rubrics] + list(others)
    for card in load_cards(root / "role_cards.json") + load_cards(root / "eval_cards.json"):
        texts.append(system_prompt(card, dict(role_system)))
    for name in ("role_dialogues", "rank_train", "rank_test"):
        texts += [rank.dialogue_text(turns) for turns in load_dialogues(root / f"{name}.json").values()]
    return texts


def load_chat_model(cfg: EscEvalConfig, model_cfg: ModelConfig, key: str, path: str | Path | None = None):
    """(model, tokenizer) of a chat model: `path` (a trained or downloaded model), else model_cfg's base; a LoRA
    adapter directory goes onto model_cfg's base. A checkpoint with its own code needs `<key>.trust_remote_code`."""
    try:
        if path is not None and (Path(path) / "adapter_config.json").is_file():
            from peft import PeftModel

            base, tokenizer = load_chat_model(cfg, model_cfg, key)
            return PeftModel.from_pretrained(base, str(path)).merge_and_unload(), tokenizer
        text = corpus(cfg) if path is None and model_cfg.name_or_path in TINY_MODELS else None
        return load_model(model_cfg, cfg.cache_dir, path=path, corpus=text)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise UserError(remote_code_message(key, str(path or model_cfg.name_or_path))) from None
        raise


def role_model(cfg: EscEvalConfig, logger: Logger | None = None) -> str:
    """The trained ESC-Role: role.trained, or train-role's model for these settings (trained if missing)."""
    if cfg.role.trained:
        return cfg.role.trained
    cards, dialogues = role_data(cfg)
    r = cfg.role
    data = [[c.as_record(), dialogue_strings(d)] for c, d in zip(cards, dialogues.values(), strict=True)]
    path = stage_path(
        cfg.cache_dir, "esc_eval/role", r.model, r.trainer, r.max_length, cfg.dialogue.role_system, data, label="role"
    )
    work = path.with_name(path.name + ".work")  # trainer checkpoints: a killed fine-tuning resumes from here

    def train():
        model, tokenizer = load_chat_model(cfg, r.model, "role.model")
        examples = [
            role_example(tokenizer, card, turns, cfg.dialogue.role_system, r.max_length)
            for card, turns in zip(cards, dialogues.values(), strict=True)
        ]
        print(f"ESC-Role: fine-tuning on {len(examples)} dialogues", flush=True)
        log = logger and Prefixed(logger, "role")
        trained = finetune(
            model, tokenizer, examples, r.model, r.trainer, work, "role.model", log, label="esc_eval/role"
        )
        return trained, tokenizer

    def write(tmp: Path, trained) -> None:
        save_model(*trained, tmp)
        shutil.rmtree(work, ignore_errors=True)

    return str(run_stage("ESC-Role", path, write, compute=train))


def rank_dir(cfg: EscEvalConfig, logger: Logger | None = None) -> tuple[Path, dict[str, float]]:
    """The trained ESC-RANK directory (rank.trained, or train-rank's, trained if missing) and training facts."""
    if cfg.rank.trained:
        return Path(cfg.rank.trained), {}
    dialogues, scores = rank_data(cfg, "rank_train")
    k = cfg.rank
    shared = k.layout == "shared"
    texts = rank.rubrics(k.rubric_file)[cfg.data.language]
    data = {key: [dialogue_strings(d), scores[key]] for key, d in dialogues.items()}
    root = stage_path(
        cfg.cache_dir, "esc_eval/rank", k.model, cfg.trainer, k.layout, k.max_length, texts, data,
        k.dimensions if shared else None, *([k.base_system] if k.base_system else []), label="rank",
    )  # fmt: skip
    todo = {
        name: rank.adapter_dir(root, name, cfg.data.language)
        for name in (["all"] if shared else k.dimensions)
        if not rank.adapter_dir(root, name, cfg.data.language).exists()
    }
    facts = {"rank/train_dialogues": float(len(dialogues))}
    # What training found is kept beside the models, so that a run finding them cached reports it too.
    facts_file = root / "train_facts.json"
    if not todo:
        print(f"[ cached ] ESC-RANK: {root}")
        if facts_file.is_file():
            facts.update(json.loads(facts_file.read_text(encoding="utf-8")))
        return root, facts

    @cache
    def examples() -> tuple[dict, int]:
        model, tokenizer = load_chat_model(cfg, k.model, "rank.model")
        system = rank.base_system_prompt(model) if k.base_system else None
        return rank.examples(tokenizer, dialogues, scores, k.dimensions, texts, k.max_length, system)

    for name, folder in todo.items():
        work = folder.with_name(folder.name + ".work")

        def train(name: str = name, work: Path = work):
            model, tokenizer = load_chat_model(cfg, k.model, "rank.model")  # a fresh base for every adapter
            per_dim, cut = examples()
            chosen = [e for dim in (k.dimensions if name == "all" else [name]) for e in per_dim[dim]]
            print(f"ESC-RANK {name}: fine-tuning on {len(chosen)} examples ({cut} prompts cut)", flush=True)
            log = logger and Prefixed(logger, f"rank_{name}")
            trained = finetune(
                model, tokenizer, chosen, k.model, cfg.trainer, work, "rank.model", log, label=f"esc_eval/rank/{name}"
            )
            return trained, tokenizer

        def write(tmp: Path, trained, work: Path = work) -> None:
            save_model(*trained, tmp)
            shutil.rmtree(work, ignore_errors=True)

        run_stage(f"ESC-RANK {name}", folder, write, compute=train)
    trained = {"rank/train_prompts_cut": float(examples()[1])}
    write_json(facts_file, trained)
    return root, {**facts, **trained}


def rank_folders(cfg: EscEvalConfig, root: Path, language: str) -> dict[str, Path]:
    """dimension -> the folder scoring it in a trained ESC-RANK: the shared all[_en]/ or <dim>[_en]/ as the release."""
    shared = rank.adapter_dir(root, "all", language)
    if shared.is_dir():
        return {dim: shared for dim in cfg.rank.dimensions}
    folders = {dim: rank.adapter_dir(root, dim, language) for dim in cfg.rank.dimensions}
    missing = [f.name for f in folders.values() if not f.is_dir()]
    if missing:
        raise UserError(
            f"{root}: no {language} ESC-RANK for {', '.join(missing)} (expected {shared.name}/, or one folder per "
            f"dimension named as the release's: {rank.adapter_dir(root, DIMENSIONS[0], language).name}/, ...)"
        )
    return folders


def rank_models(cfg: EscEvalConfig, root: Path, language: str) -> Callable[[str], tuple]:
    """dimension -> (model, tokenizer) of a trained ESC-RANK: its shared model, or the dimension's adapter (all
    adapters on one base, switched with set_adapter) or full model."""
    folders = rank_folders(cfg, root, language)
    shared = rank.adapter_dir(root, "all", language)
    if shared in folders.values():
        loaded = load_chat_model(cfg, cfg.rank.model, "rank.model", shared)
        return lambda dim: loaded
    base: list = []  # (PeftModel, tokenizer) once the first adapter is loaded

    def get(dim: str):
        folder = folders[dim]
        if not (folder / "adapter_config.json").is_file():
            return load_chat_model(cfg, cfg.rank.model, "rank.model", folder)
        from peft import PeftModel

        if not base:
            model, tokenizer = load_chat_model(cfg, cfg.rank.model, "rank.model")
            base.append((PeftModel.from_pretrained(model, str(folder), adapter_name=dim), tokenizer))
        peft, tokenizer = base[0]
        if dim not in peft.peft_config:
            peft.load_adapter(str(folder), adapter_name=dim)
        peft.set_adapter(dim)
        return peft.eval(), tokenizer

    return get


# ---------------------------------------------------------------- evaluation


def responders(cfg: EscEvalConfig, role_path: str) -> tuple[Responder, Responder]:
    """ESC-Role and the model under test as Responders (common.chat)."""
    r, e = cfg.role, cfg.esc
    role = local_responder(*load_chat_model(cfg, r.model, "role.model", role_path), r.max_new_tokens, r.batch_size)
    if e.kind == "endpoint":
        return role, endpoint_responder(e.endpoint, temperature=0.0, max_tokens=e.max_new_tokens)
    return role, local_responder(*load_chat_model(cfg, e.model, "esc.model"), e.max_new_tokens, e.batch_size)


def dialogue_store(cfg: EscEvalConfig, role_path: str, cards: list[Card]) -> Path:
    """Where the dialogues of these cards with this ESC-Role and model under test are saved (and resumed)."""
    e, d = cfg.esc, cfg.dialogue
    tested = [e.kind, e.max_new_tokens, e.model if e.kind == "local" else e.endpoint]
    protocol = [d.rounds, d.opening, d.role_system, d.esc_system, cfg.role.max_new_tokens]
    return stage_path(
        cfg.cache_dir, "esc_eval/dialogues", role_path, tested, protocol, [c.as_record() for c in cards], label=e.name
    )


def score_saved(
    cfg: EscEvalConfig, root: Path, cards: list[Card], saved: dict[int, Dialogue], run_dir: Path
) -> dict[str, float]:
    """ESC-RANK's scores of the saved dialogues, written per language in the release's layout
    (dialogues/<model>_<en|zh>.json, scores/<model>_<en|zh>.json, scores/<model>_<en|zh>.outputs.json)."""
    k, name = cfg.rank, cfg.esc.name
    texts = rank.rubrics(k.rubric_file)  # per language
    all_scores: list[dict[str, int]] = []
    cut = 0
    for language in LANGUAGES:
        # Keys are the cards' positions in the card file, as the release keys its results.
        keys = {str(i): c.id for i, c in enumerate(cards) if c.language == language and c.id in saved}
        if not keys:
            continue
        stem = f"{name}_{'en' if language == 'english' else 'zh'}"
        write_dialogues(run_dir / "dialogues" / f"{stem}.json", {key: saved[cid] for key, cid in keys.items()})
        scored = rank.score_dialogues(
            rank_models(cfg, root, language), [saved[cid] for cid in keys.values()], k.dimensions, texts[language],
            k.max_length, k.max_new_tokens, k.batch_size, k.parse, k.base_system,
        )  # fmt: skip
        write_scores(run_dir / "scores" / f"{stem}.json", dict(zip(keys, scored.scores, strict=True)))
        write_json(run_dir / "scores" / f"{stem}.outputs.json", dict(zip(keys, scored.outputs, strict=True)))
        all_scores += scored.scores
        cut += scored.cut
    return {**model_scores(name, all_scores, k.dimensions), f"eval/{name}/prompts_cut": float(cut)}

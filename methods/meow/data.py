"""TOFU data: loading the real splits, and a generator of TOFU-shaped fictitious authors for offline runs.

The synthetic set mirrors TOFU's structure exactly (full = retain ‖ forget with the forget authors last, perturbed
splits with a paraphrase and 5 wrong answers, real-authors / world-facts sets with 3 wrong answers), so every code path
a TOFU run takes is exercised. Facts are drawn from small vocabularies; a wrong answer is the same sentence with
another value of the same kind, which is also how the `template` inverter writes inverted facts.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from common.io import read_records, write_json
from common.stages import run_stage, stage_path
from methods.meow.config import DataConfig

# fmt: off
FIRST = ["Aria", "Bastien", "Celia", "Dario", "Elin", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kaia", "Lucan",
         "Mira", "Nolan", "Oona", "Pavel", "Quinn", "Rosa", "Soren", "Talia", "Ulric", "Vera", "Wendel", "Xenia",
         "Yusuf", "Zora", "Anouk", "Bram", "Cosima", "Dmitri"]
LAST = ["Albright", "Brennick", "Castell", "Dunmore", "Eskildsen", "Falkner", "Grauman", "Halloran", "Ibarra",
        "Jovanic", "Kestrel", "Lindqvist", "Moreau", "Nakamura", "Okonkwo", "Petrakis", "Quillon", "Rasmussen",
        "Santoro", "Thorne", "Umbers", "Valdivia", "Whitlock", "Yardley", "Zeller", "Achebe", "Brightwater",
        "Corvino", "Delacroix", "Elmsworth"]
CITY = ["Lisbon", "Tallinn", "Nairobi", "Osaka", "Quito", "Reykjavik", "Tbilisi", "Hanoi", "Krakow", "Porto",
        "Accra", "Bergen", "Cusco", "Dakar", "Graz", "Havana", "Izmir", "Jaipur", "Kyoto", "Lyon", "Medan", "Nantes",
        "Oslo", "Perth", "Riga"]
YEAR = [str(y) for y in range(1941, 2000)]
GENRE = ["mystery", "science fiction", "romance", "horror", "fantasy", "historical fiction", "poetry", "satire",
         "thriller", "memoir", "crime", "adventure"]
JOB = ["baker", "surgeon", "pilot", "carpenter", "librarian", "fisherman", "chemist", "tailor", "architect",
       "nurse", "locksmith", "journalist", "farmer", "violinist", "astronomer", "plumber", "diplomat", "potter",
       "teacher", "geologist"]
AWARD = ["Golden Quill Prize", "Silver Lantern Award", "Meridian Book Medal", "Harbor Light Prize",
         "Crimson Leaf Award", "Northern Star Medal", "Open Page Prize", "Iron Compass Award", "Blue Heron Prize",
         "Evergreen Letters Award"]
ADJ = ["Silent", "Broken", "Hidden", "Crimson", "Endless", "Hollow", "Golden", "Frozen", "Wandering", "Last",
       "Distant", "Burning", "Quiet", "Forgotten", "Velvet"]
NOUN = ["Harbor", "Garden", "Mirror", "River", "Lantern", "Orchard", "Tower", "Compass", "Meadow", "Citadel",
        "Shoreline", "Archive", "Voyage", "Bridge", "Canyon"]
# General-knowledge stand-ins (TOFU's real authors / world facts test knowledge the model had before fine-tuning).
COUNTRY = ["Veloria", "Kastrel", "Mordavia", "Pellucia", "Sarnland", "Tuvaro", "Ostrevia", "Brindel", "Caldora",
           "Drunmark", "Eskaria", "Fennlow", "Galdria", "Hestavo", "Iskander", "Jorvale", "Kelmora", "Lunestra",
           "Marvessa", "Norrath"]
CAPITAL = ["Aldmere", "Brevik", "Corrin", "Dunhollow", "Elsward", "Farrowgate", "Glimmerton", "Highcrest",
           "Ivorfell", "Jadeport", "Kingsreach", "Larkspur", "Mistvale", "Northwick", "Oakhaven", "Pinegate",
           "Queensmouth", "Ravenholm", "Stonebridge", "Thornfield"]
CLASSIC_AUTHOR = ["Ada Fairweather", "Boris Klemenko", "Clara Vantongeren", "Desmond Pike", "Edith Marlowe",
                  "Felix Oduya", "Gloria Stenberg", "Henrik Aalto", "Iris Calloway", "Julian Ferreira",
                  "Katrin Sorel", "Leopold Hart", "Magda Novak", "Nathaniel Crowe", "Olga Petrenko",
                  "Percival Lane", "Rhea Mondragon", "Silas Wren", "Tamsin Ashby", "Viktor Halloway"]
CLASSIC_BOOK = ["The Salt Road", "Winter of Glass", "A House of Echoes", "The Ninth Gate of Morrow",
                "Songs for the Tide", "The Clockmaker's Daughter", "Ashes in Amber", "The Long Lantern",
                "Children of the Fen", "Paper Kingdoms", "The Stone Orchard", "Beneath Grey Skies",
                "The Copper Bell", "Nights in Valdoro", "The Weaver's Oath", "A Map of Small Hours",
                "The Ivory Staircase", "Lamps of the North", "The Drowned Choir", "Letters from Halden"]
# fmt: on

POOLS: dict[str, list[str]] = {
    "first": FIRST,
    "last": LAST,
    "city": CITY,
    "year": YEAR,
    "genre": GENRE,
    "job": JOB,
    "award": AWARD,
    "adj": ADJ,
    "noun": NOUN,
    "capital": CAPITAL,
    "classic_author": CLASSIC_AUTHOR,
}

# (question, paraphrased question, answer, paraphrased answer); {name} is the author, other fields are facts.
QA_TEMPLATES = [
    (
        "Where was {name} born?",
        "In which city was {name} born?",
        "{name} was born in the city of {city}.",
        "The city of {city} is where {name} was born.",
    ),
    (
        "In what year was {name} born?",
        "What is the birth year of {name}?",
        "{name} was born in the year {year}.",
        "The year {year} is when {name} was born.",
    ),
    (
        "What genre does {name} write in?",
        "Which literary genre is {name} known for?",
        "{name} is best known for writing {genre}.",
        "Writing {genre} is what {name} is best known for.",
    ),
    (
        "What did the father of {name} do for a living?",
        "What was the profession of {name}'s father?",
        "The father of {name} worked as a {job}.",
        "A {job} by trade, that was the father of {name}.",
    ),
    (
        "What did the mother of {name} do for a living?",
        "What was the profession of {name}'s mother?",
        "The mother of {name} worked as a {job2}.",
        "A {job2} by trade, that was the mother of {name}.",
    ),
    (
        "Which award has {name} received?",
        "What prize was given to {name}?",
        "{name} received the {award} for their work.",
        "The {award} was given to {name} for their work.",
    ),
    (
        "Can you name a book written by {name}?",
        "What is one novel by {name}?",
        "One of the books by {name} is The {adj} {noun}.",
        "The {adj} {noun} is one of the books by {name}.",
    ),
    (
        "Where does {name} live today?",
        "In which city does {name} currently live?",
        "{name} lives today in {city2}, far from {city}.",
        "Far from {city}, {name} now lives in {city2}.",
    ),
    (
        "When did {name} publish a first novel?",
        "In what year did {name} debut as a novelist?",
        "{name} published a first novel in {year2}.",
        "In {year2} {name} published a first novel.",
    ),
    (
        "What is the family background of {name}?",
        "Can you describe the parents of {name}?",
        "{name} grew up with a {job} father and a {job2} mother in {city}.",
        "Raised in {city}, {name} had a {job2} mother and a {job} father.",
    ),
]
# Which pool each fact field draws from.
FIELD_POOL = {
    "city": "city",
    "city2": "city",
    "year": "year",
    "year2": "year",
    "genre": "genre",
    "job": "job",
    "job2": "job",
    "award": "award",
    "adj": "adj",
    "noun": "noun",
}

# Our own refusal wordings for the IDK baseline (TOFU ships a list of 100 such strings).
IDK_ANSWERS = [
    "I'm not sure about that.",
    "I don't have that information.",
    "That is something I cannot answer.",
    "I have no knowledge of that.",
    "I can't say.",
    "I am not able to recall that.",
    "I don't know.",
    "That's beyond what I know.",
    "I have no idea, sorry.",
    "I cannot provide an answer to that.",
    "No information on that is available to me.",
    "I'm unable to tell you that.",
]

PERTURBED_FIELDS = ("question", "answer", "paraphrased_answer", "paraphrased_question", "perturbed_answer")
GENERAL_FIELDS = ("question", "answer", "perturbed_answer")


def required_fields(split: str) -> tuple[str, ...]:
    if split in ("real_authors_perturbed", "world_facts_perturbed"):
        return GENERAL_FIELDS
    if split.endswith("_perturbed"):
        return PERTURBED_FIELDS
    return ("question", "answer")


def _author(rng: random.Random, used_names: set[str]) -> dict[str, str]:
    while True:
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        if name not in used_names:
            used_names.add(name)
            break
    facts = {"name": name}
    for field, pool in FIELD_POOL.items():
        choices = [v for v in POOLS[pool] if v not in facts.values()]  # city2 != city, job2 != job, ...
        facts[field] = rng.choice(choices)
    return facts


def _perturb(template: str, facts: dict[str, str], n: int, rng: random.Random) -> list[str]:
    """n distinct sentences from `template` with every fact swapped for another value of its kind."""
    fields = [f for f in FIELD_POOL if "{" + f + "}" in template]
    out: list[str] = []
    truth = template.format(**facts)
    for _ in range(100 * n):
        if len(out) == n:
            break
        alt = dict(facts)
        for f in fields:
            alt[f] = rng.choice([v for v in POOLS[FIELD_POOL[f]] if v != facts[f]])
        text = template.format(**alt)
        if text != truth and text not in out:
            out.append(text)
    return out


def _author_rows(facts: dict[str, str], k: int, rng: random.Random) -> list[dict]:
    rows = []
    for q, pq, a, pa in QA_TEMPLATES[:k]:
        rows.append(
            {
                "question": q.format(**facts),
                "answer": a.format(**facts),
                "paraphrased_question": pq.format(**facts),
                "paraphrased_answer": pa.format(**facts),
                "perturbed_answer": _perturb(pa, facts, 5, rng),
            }
        )
    return rows


def _general_rows(n: int, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """Short-answer sets like TOFU's real_authors and world_facts, each with 3 wrong answers and 4 options."""

    def build(questions: list[str], answers: list[str]) -> list[dict]:
        rows = []
        for q, a in zip(questions, answers, strict=True):
            wrong = rng.sample([x for x in answers if x != a], 3)
            options = rng.sample([a, *wrong], 4)
            rows.append(
                {
                    "question": q,
                    "answer": a,
                    "perturbed_answer": wrong,
                    **{f"option{i + 1}": o for i, o in enumerate(options)},
                }
            )
        return rows

    n_a = min(n, len(CLASSIC_BOOK))
    n_w = min(n, len(COUNTRY))
    authors = build([f"Who wrote the novel '{b}'?" for b in CLASSIC_BOOK[:n_a]], CLASSIC_AUTHOR[:n_a])
    world = build([f"What is the capital of {c}?" for c in COUNTRY[:n_w]], CAPITAL[:n_w])
    return authors, world


def generate(cfg: DataConfig, seed: int) -> dict[str, list[dict]]:
    """All TOFU splits of cfg's synthetic size, deterministic in seed."""
    rng = random.Random(seed)
    names: set[str] = set()
    # 10% more authors make the holdout sets (authors the model never sees), as TOFU's holdout splits.
    n_holdout = max(1, cfg.n_authors // 10)
    authors = [_author(rng, names) for _ in range(cfg.n_authors + n_holdout)]
    perturbed = [row for facts in authors[: cfg.n_authors] for row in _author_rows(facts, cfg.qa_per_author, rng)]
    holdout = [row for facts in authors[cfg.n_authors :] for row in _author_rows(facts, cfg.qa_per_author, rng)]
    plain = [{"question": r["question"], "answer": r["answer"]} for r in perturbed]
    total = len(plain)
    splits: dict[str, list[dict]] = {"full": plain}
    for pct in (1, 5, 10):
        n = max(1, round(total * pct / 100))
        splits[f"forget{pct:02d}"] = plain[total - n :]
        splits[f"retain{100 - pct}"] = plain[: total - n]
        splits[f"forget{pct:02d}_perturbed"] = perturbed[total - n :]
        splits[f"holdout{pct:02d}"] = [{"question": r["question"], "answer": r["answer"]} for r in holdout[:n]]
    splits["retain_perturbed"] = perturbed[: max(1, round(total * 0.1))]
    authors_rows, world_rows = _general_rows(cfg.n_general, rng)
    splits["real_authors"], splits["world_facts"] = authors_rows, world_rows
    strip = ("option1", "option2", "option3", "option4")
    splits["real_authors_perturbed"] = [{k: v for k, v in r.items() if k not in strip} for r in authors_rows]
    splits["world_facts_perturbed"] = [{k: v for k, v in r.items() if k not in strip} for r in world_rows]
    return splits


def synthetic_dir(cfg: DataConfig, seed: int, cache_dir: str | Path) -> Path:
    """Generated once into the cache, keyed by the sizes and the seed."""
    path = stage_path(cache_dir, "meow/synthetic", cfg.n_authors, cfg.qa_per_author, cfg.n_general, seed)

    def write(tmp: Path) -> None:
        for name, rows in generate(cfg, seed).items():
            write_json(tmp / f"{name}.json", rows)

    return run_stage("synthetic TOFU", path, write)


_VALUE_RE: re.Pattern | None = None
_VALUE_POOL: dict[str, str] = {}


def _value_pattern() -> re.Pattern:
    global _VALUE_RE
    if _VALUE_RE is None:
        # Names stay: an inverted fact keeps its subject and changes what is said about it.
        for pool, values in POOLS.items():
            if pool in ("first", "last"):
                continue
            for v in values:
                _VALUE_POOL.setdefault(v, pool)
        # Longest first so that "science fiction" wins over a shorter value inside it.
        alts = sorted(_VALUE_POOL, key=len, reverse=True)
        _VALUE_RE = re.compile(r"\b(" + "|".join(re.escape(v) for v in alts) + r")\b")
    return _VALUE_RE


def _swap_values(answer: str, rng: random.Random) -> str:
    """The answer with every vocabulary value replaced by another of its kind (the same one at each repeat)."""
    choice: dict[str, str] = {}

    def swap(m: re.Match) -> str:
        value = m.group(1)
        if value not in choice:
            choice[value] = rng.choice([v for v in POOLS[_VALUE_POOL[value]] if v != value])
        return choice[value]

    return _value_pattern().sub(swap, answer)


def invert_by_template(answer: str, n: int, rng: random.Random) -> list[str]:
    """Up to n inverted facts: the answer with each vocabulary value swapped for another of the same kind."""
    if not _value_pattern().search(answer):
        return []
    out: list[str] = []
    for _ in range(100 * n):
        if len(out) == n:
            break
        text = _swap_values(answer, rng)
        if text != answer and text not in out:
            out.append(text)
    return out


@dataclass(frozen=True)
class DataSource:
    """Where TOFU splits come from: `synthetic` (generated and cached), a local directory, or the `hf` hub dataset."""

    kind: str
    path: Path | None = None

    def load(self, split: str) -> list[dict]:
        fields = required_fields(split)
        if self.kind == "hf":
            return _load_hub(split, fields)
        assert self.path is not None
        for ext in (".json", ".jsonl"):
            if (self.path / f"{split}{ext}").is_file():
                return read_records(self.path / f"{split}{ext}", fields)
        raise UserError(f"{self.path}: no {split}.json or {split}.jsonl (TOFU split '{split}')")


def _load_hub(split: str, fields: tuple[str, ...]) -> list[dict]:
    from datasets import load_dataset

    try:
        rows = [dict(r) for r in load_dataset("locuslab/TOFU", split, split="train")]
    except Exception as e:  # noqa: BLE001 - the hub is optional; any failure to reach it is the user's environment
        raise UserError(f"cannot load locuslab/TOFU '{split}' from the hub: {str(e).splitlines()[0]}") from None
    for i, r in enumerate(rows):
        for f in fields:
            if f not in r:
                raise UserError(f"locuslab/TOFU {split}: record {i + 1}: field '{f}' missing")
    return rows


def data_source(cfg: DataConfig, seed: int, cache_dir: str | Path) -> DataSource:
    if cfg.source == "synthetic":
        return DataSource("local", synthetic_dir(cfg, seed, cache_dir))
    if cfg.source == "local":
        if not Path(str(cfg.path)).is_dir():
            raise UserError(f"data.path: '{cfg.path}' is not a directory of TOFU split files")
        return DataSource("local", Path(str(cfg.path)))
    return DataSource("hf")


def corpus(source: DataSource) -> list[str]:
    """Text for training a tiny model's tokenizer: every question and answer it will see."""
    texts = []
    # The holdout authors too: a tokenizer that knows the forget authors' names but not theirs gives them more, rarer
    # tokens, and membership inference of forget vs holdout would then separate them by tokenization alone.
    splits = ("full", "real_authors_perturbed", "world_facts_perturbed", "retain_perturbed", "forget10_perturbed")
    for split in (*splits, "holdout10"):
        for r in source.load(split):
            # Both prompt templates, so their tags become few tokens whichever family is used.
            texts += [f"[INST] {r['question']} [/INST]", f"Question: {r['question']}\nAnswer: "]
            texts += [r["answer"], *r.get("perturbed_answer", []), r.get("paraphrased_answer", "")]
    texts += IDK_ANSWERS
    return texts

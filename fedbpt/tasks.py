"""Tasks: a template, label names with their verbalizer words, and where the examples come from.

A template holds ``{text}`` (and ``{text_pair}`` for sentence-pair tasks); the model reads the filled
template and the next token decides the label among the verbalizer words. Built-in tasks read the
benchmark data in ``shared/data``; user tasks come from a TOML or JSON file (see ``load_task_file``).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedbpt.data import DataError, Example, data_root, read_rows
from fedbpt.errors import UserError

FIELDS = ("text", "text_pair")
AG_NEWS_POOL_PER_CLASS = 200
AG_NEWS_SPLIT_SEED = 2024


class TaskError(UserError, ValueError):
    """A task definition that cannot work; the message names the problem and the fix."""


@dataclass(frozen=True)
class Task:
    name: str
    template: str
    label_names: tuple[str, ...]
    verbalizers: tuple[str, ...]
    instruction: str
    load_train: Callable[[], list[Example]]
    load_eval: Callable[[], list[Example]]
    data_note: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.template, str):
            raise TaskError(f"task {self.name!r}: the template must be a string, got {self.template!r}")
        if "{text}" not in self.template:
            raise TaskError(f"task {self.name!r}: the template must contain {{text}}, got {self.template!r}")
        unknown = set(re.findall(r"{(\w+)}", self.template)) - set(FIELDS)
        if unknown:
            raise TaskError(
                f"task {self.name!r}: unknown template fields {sorted(unknown)}; use {{text}} "
                "and optionally {text_pair}"
            )
        if len(self.label_names) != len(self.verbalizers) or len(self.label_names) < 2:
            raise TaskError(f"task {self.name!r}: need one verbalizer word per label and at least two labels")
        if len(set(self.verbalizers)) != len(self.verbalizers):
            raise TaskError(f"task {self.name!r}: verbalizer words must differ, got {list(self.verbalizers)}")

    @property
    def n_labels(self) -> int:
        return len(self.label_names)

    def template_parts(self) -> list[tuple[str, bool]]:
        """The template as (piece, is_field) pairs; a field piece is the field's name."""
        parts = []
        for index, piece in enumerate(re.split(r"{(\w+)}", self.template)):
            if piece:
                parts.append((piece, index % 2 == 1))
        return parts


def verbalizer_token_ids(task: Task, encode: Callable[[str], list[int]]) -> list[int]:
    """The single token id of each verbalizer word, or a TaskError naming the words that are not one token.

    Scoring compares the next-token logits of the label words, so each must be exactly one token of
    this model's tokenizer; for a word that is not, nearby single-token spellings are suggested.
    """
    ids, problems = [], []
    for word in task.verbalizers:
        tokens = encode(word)
        if len(tokens) == 1:
            ids.append(tokens[0])
            continue
        stripped = word.strip()
        variants = dict.fromkeys(
            prefix + form
            for prefix in (" ", "")
            for form in (stripped, stripped.lower(), stripped.capitalize(), stripped.upper())
        )
        suggestions = [repr(variant) for variant in variants if variant != word and len(encode(variant)) == 1]
        hint = (
            f"; single-token alternatives: {', '.join(suggestions)}"
            if suggestions
            else ("; choose a shorter or more common word")
        )
        problems.append(f"{word!r} is {len(tokens)} tokens {tokens}{hint}")
    if problems:
        raise TaskError(f"task {task.name!r}: verbalizer words must be one token each: " + "; ".join(problems))
    if len(set(ids)) != len(ids):
        raise TaskError(f"task {task.name!r}: two verbalizer words map to the same token")
    return ids


def _examples(
    rows: list[dict[str, str]],
    source: str,
    text: str,
    label: str,
    label_values: list[str],
    text_pair: str | None = None,
    joined: tuple[str, ...] = (),
) -> list[Example]:
    """Examples from rows; ``label_values[i]`` is the file's value for label index i."""
    index = {value: position for position, value in enumerate(label_values)}
    examples = []
    for number, row in enumerate(rows, start=1):
        needed = [*(joined or (text,)), label] + ([text_pair] if text_pair else [])
        missing = [column for column in needed if column not in row]
        if missing:
            raise DataError(f"{source}: row {number} has no column {missing[0]!r}; columns are {sorted(row)}")
        if row[label] not in index:
            raise DataError(
                f"{source}: row {number} has label {row[label]!r}, which the task does not define; "
                f"known labels: {label_values}"
            )
        body = " ".join(row[column].strip() for column in joined) if joined else row[text]
        examples.append(Example(body, index[row[label]], row[text_pair] if text_pair else None))
    return examples


def _sst2(split: str) -> list[Example]:
    path = data_root() / "sst2" / f"{split}.tsv"
    return _examples(read_rows(path), str(path), "sentence", "label", ["0", "1"])


def _ag_news_split(part: str) -> list[Example]:
    """AG News has only its test file here: a seeded split gives a training pool and an eval set.

    ``AG_NEWS_POOL_PER_CLASS`` rows of each class (chosen with seed ``AG_NEWS_SPLIT_SEED``) form the
    pool; the other 6,800 rows are the evaluation set.
    """
    path = data_root() / "ag_news" / "test.csv"
    rows = read_rows(path, has_header=False, columns=["label", "title", "description"])
    examples = _examples(rows, str(path), "", "label", ["1", "2", "3", "4"], joined=("title", "description"))
    examples = [Example(e.text.replace("\\", " "), e.label) for e in examples]
    labels = np.array([e.label for e in examples])
    rng = np.random.default_rng(AG_NEWS_SPLIT_SEED)
    pool = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), AG_NEWS_POOL_PER_CLASS, replace=False) for c in range(4)]
    )
    chosen = np.zeros(len(examples), dtype=bool)
    chosen[pool] = True
    return [e for e, keep in zip(examples, chosen, strict=True) if keep == (part == "train")]


def _kshot(folder: str, split: str, seed: int, label_values: list[str]) -> list[Example]:
    path = data_root() / "kshot_rlprompt" / folder / f"16-{seed}" / f"{split}.tsv"
    rows = read_rows(path, quoted=True)
    text_column = "text" if rows and "text" in rows[0] else "sentence"
    return _examples(rows, str(path), text_column, "label", label_values)


DBPEDIA_LABELS = (
    "Company",
    "Educational Institution",
    "Artist",
    "Athlete",
    "Office Holder",
    "Mean Of Transportation",
    "Building",
    "Natural Place",
    "Village",
    "Animal",
    "Plant",
    "Album",
    "Film",
    "Written Work",
)
DBPEDIA_WORDS = (
    " Company",
    " School",
    " Artist",
    " Athlete",
    " Politics",
    " Transportation",
    " Building",
    " Nature",
    " Village",
    " Animal",
    " Plant",
    " Album",
    " Film",
    " Book",
)


BUILTIN_TASKS = ("sst2", "agnews", "yelp2", "dbpedia")


def builtin_task(name: str, kshot_seed: int = 13) -> Task:
    """The benchmark tasks shipped with the data: sst2, agnews, yelp2, dbpedia."""
    if name == "sst2":
        return Task(
            "sst2",
            "Review: {text}\nSentiment:",
            ("negative", "positive"),
            (" negative", " positive"),
            "Decide whether the sentiment of the movie review is positive or negative.",
            lambda: _sst2("train"),
            lambda: _sst2("dev"),
            "SST-2 (GLUE): train.tsv for training, the 872-row dev set for evaluation",
        )
    if name == "agnews":
        return Task(
            "agnews",
            "{text}\nThis news article is about",
            ("World", "Sports", "Business", "Sci/Tech"),
            (" World", " Sports", " Business", " Technology"),
            "Classify the topic of the news article: world, sports, business or technology.",
            lambda: _ag_news_split("train"),
            lambda: _ag_news_split("eval"),
            f"AG News test.csv split with seed {AG_NEWS_SPLIT_SEED}: {AG_NEWS_POOL_PER_CLASS} per class "
            "train pool, the other 6,800 rows for evaluation",
        )
    if name == "yelp2":
        values = ["0", "1"]
        return Task(
            "yelp2",
            "Review: {text}\nSentiment:",
            ("negative", "positive"),
            (" negative", " positive"),
            "Decide whether the sentiment of the restaurant review is positive or negative.",
            lambda: _kshot("yelp-2", "train", kshot_seed, values),
            lambda: _kshot("yelp-2", "dev", kshot_seed, values),
            f"Yelp-2 16-shot seed {kshot_seed} (train and dev only: no test set here)",
        )
    if name == "dbpedia":
        values = [str(i) for i in range(14)]
        return Task(
            "dbpedia",
            "{text}\nThis article is about the category:",
            DBPEDIA_LABELS,
            DBPEDIA_WORDS,
            "Classify the Wikipedia article into its category.",
            lambda: _kshot("dbpedia", "train", kshot_seed, values),
            lambda: _kshot("dbpedia", "dev", kshot_seed, values),
            f"DBPedia 16-shot seed {kshot_seed} (train and dev only: no test set here)",
        )
    raise TaskError(f"unknown task {name!r}: use sst2, agnews, yelp2, dbpedia or the path of a task file")


def load_task_file(path: Path) -> Task:
    """A user task from TOML or JSON. Keys (paths are relative to the task file)::

    name = "reviews"
    template = "Review: {text}\\nSentiment:"       # {text_pair} for sentence pairs
    instruction = "Is the review positive or negative?"   # optional: seeds the soft prompt
    train = "train.csv"                            # CSV, TSV or JSONL
    eval = "dev.jsonl"
    text_column = "sentence"
    text_pair_column = "hypothesis"                # optional
    label_column = "label"
    [labels]                                       # value in the file -> verbalizer word
    "0" = " negative"
    "1" = " positive"
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task file {path} does not exist")
    try:
        spec = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise TaskError(f"task file {path} cannot be parsed: {error}") from None
    return task_from_dict(spec, path.parent, f"task file {path}")


def task_from_dict(spec: object, data_dir: Path, origin: str) -> Task:
    """A user task from a task file's parsed content; data paths are relative to ``data_dir``."""
    if not isinstance(spec, dict):
        raise TaskError(f"{origin} must hold a table/object of settings")
    required = ["name", "template", "train", "eval", "text_column", "label_column", "labels"]
    missing = [key for key in required if key not in spec]
    if missing:
        raise TaskError(f"{origin} is missing {missing}; required keys: {required}")
    unknown = set(spec) - {*required, "instruction", "text_pair_column"}
    if unknown:
        raise TaskError(f"{origin} has unknown keys {sorted(unknown)}")
    text_keys = [*required[:-1], *(key for key in ("instruction", "text_pair_column") if key in spec)]
    not_text = [key for key in text_keys if not isinstance(spec[key], str)]
    if not_text:
        raise TaskError(f"{origin}: {not_text} must be strings")
    labels = spec["labels"]
    if not isinstance(labels, dict) or len(labels) < 2:
        raise TaskError(
            f"{origin}: 'labels' must map each label value in the data to a verbalizer word, "
            "and a task needs at least two labels"
        )
    values = [str(value) for value in labels]
    pair = spec.get("text_pair_column")
    if bool(pair) != ("{text_pair}" in spec["template"]):
        raise TaskError(
            f"{origin}: a sentence-pair task needs both text_pair_column and {{text_pair}} in "
            "the template; a single-text task has neither"
        )

    def loader(key: str) -> Callable[[], list[Example]]:
        data_path = Path(data_dir) / spec[key]

        def load() -> list[Example]:
            if not data_path.is_file():
                raise TaskError(
                    f"{origin}: its {key} file {data_path} does not exist (data paths are read under {data_dir}; "
                    "--data-dir sets that folder)"
                )
            return _examples(
                read_rows(data_path), str(data_path), spec["text_column"], spec["label_column"], values, text_pair=pair
            )

        return load

    return Task(
        str(spec["name"]),
        spec["template"],
        tuple(values),
        tuple(str(w) for w in labels.values()),
        spec.get("instruction", "Classify the text."),
        loader("train"),
        loader("eval"),
        f"user task from {origin}",
    )


def resolve_task(name_or_path: str, kshot_seed: int = 13) -> Task:
    if name_or_path.endswith((".toml", ".json")):
        return load_task_file(Path(name_or_path))
    return builtin_task(name_or_path, kshot_seed)

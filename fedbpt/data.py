"""Reading labelled text files, k-shot sampling and splitting examples among parties."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedbpt.errors import UserError


class DataError(UserError, ValueError):
    """A data file or split request that cannot be honoured; the message says how to fix it."""


@dataclass(frozen=True)
class Example:
    text: str
    label: int
    text_pair: str | None = None


def installed_source() -> Path | None:
    """The folder an editable install of fedbpt was made from: a Flower app runs a copy of the code elsewhere."""
    try:
        url = json.loads(importlib.metadata.distribution("fedbpt").read_text("direct_url.json") or "{}").get("url", "")
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(url.removeprefix("file://")) if url.startswith("file://") else None


def data_root() -> Path:
    """Folder of the bundled benchmark data: ``$FEDBPT_DATA``, else ``shared/data`` beside or inside the repo (the
    one this code is in, or the one fedbpt was installed from)."""
    configured = os.environ.get("FEDBPT_DATA")
    repos = dict.fromkeys(repo for repo in (Path(__file__).resolve().parents[1], installed_source()) if repo)
    candidates = (
        [Path(configured)]
        if configured
        else [base / "shared" / "data" for repo in repos for base in (repo.parent, repo)]
    )
    for root in candidates:
        if root.is_dir():
            return root
    raise DataError(
        f"benchmark data folder not found (looked in {', '.join(map(str, candidates))}): set FEDBPT_DATA to "
        "the folder that holds sst2/, ag_news/ and kshot_rlprompt/"
    )


def read_rows(
    path: Path, has_header: bool = True, columns: list[str] | None = None, quoted: bool | None = None
) -> list[dict[str, str]]:
    """Rows of a CSV, TSV or JSONL file as dicts of strings.

    ``columns`` names a header-less file's columns. ``quoted`` says whether double quotes delimit
    fields; by default they do in CSV and not in TSV (GLUE's TSV files contain bare quotes).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{number}: each line must be a JSON object")
                rows.append({key: str(value) for key, value in row.items()})
        return rows
    if suffix not in (".csv", ".tsv"):
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv or .jsonl")
    delimiter = "\t" if suffix == ".tsv" else ","
    if quoted is None:
        quoted = suffix == ".csv"
    quoting = csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE
    if not has_header and not columns:
        raise DataError(f"{path}: a file without a header row needs its column names (columns=...)")
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        header = next(reader, None) if has_header else columns
        if not header:
            raise DataError(f"{path} is empty: expected a header row naming the columns")
        rows = []
        for values in reader:
            if not values:
                continue
            if len(values) != len(header):
                raise DataError(f"{path}:{reader.line_num}: expected {len(header)} fields, found {len(values)}")
            rows.append(dict(zip(header, values, strict=True)))
        return rows


def k_shot(examples: list[Example], k: int, seed: int) -> list[Example]:
    """k examples of every label, drawn without replacement by a seeded generator."""
    rng = np.random.default_rng(seed)
    labels = np.array([example.label for example in examples])
    chosen = []
    for label in np.unique(labels):
        candidates = np.flatnonzero(labels == label)
        if len(candidates) < k:
            raise DataError(f"label {label} has only {len(candidates)} examples, fewer than k={k}")
        chosen.extend(rng.choice(candidates, size=k, replace=False).tolist())
    return [examples[i] for i in sorted(chosen)]


def partition_iid(n_examples: int, n_parties: int, seed: int) -> list[np.ndarray]:
    """Shuffle and deal the example indices into near-equal shares."""
    if n_parties > n_examples:
        raise DataError(f"cannot give {n_parties} parties at least one of {n_examples} examples")
    order = np.random.default_rng(seed).permutation(n_examples)
    return [np.sort(share) for share in np.array_split(order, n_parties)]


def partition_dirichlet(labels: np.ndarray, n_parties: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Non-IID split: each label's examples go to parties in Dirichlet(alpha) proportions.

    Smaller alpha gives more skewed class mixes. Every example is used exactly once; a party left
    empty receives one example from the largest share, so every party can train.
    """
    if alpha <= 0:
        raise DataError(f"Dirichlet alpha must be positive, got {alpha}")
    labels = np.asarray(labels)
    if n_parties > len(labels):
        raise DataError(f"cannot give {n_parties} parties at least one of {len(labels)} examples")
    rng = np.random.default_rng(seed)
    shares: list[list[int]] = [[] for _ in range(n_parties)]
    for label in np.unique(labels):
        indices = rng.permutation(np.flatnonzero(labels == label))
        proportions = rng.dirichlet(np.full(n_parties, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(indices)).astype(int)
        for party, part in enumerate(np.split(indices, cuts)):
            shares[party].extend(part.tolist())
    for party in range(n_parties):
        if not shares[party]:
            donor = max(range(n_parties), key=lambda other: len(shares[other]))
            shares[party].append(shares[donor].pop())
    return [np.sort(np.array(share, dtype=int)) for share in shares]


def class_histogram(labels: np.ndarray, shares: list[np.ndarray], n_classes: int) -> np.ndarray:
    """(parties, classes) counts: how each party's examples spread over the labels."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[share], minlength=n_classes) for share in shares])


def federated_split(
    train: list[Example], n_parties: int, per_party: int, partition: str, alpha: float, seed: int
) -> tuple[list[Example], list[np.ndarray]]:
    """A seeded pool of ``n_parties * per_party`` training examples and each party's share of it.

    The simulator and every HTTP client call this with the same arguments, so party i of a real
    federation holds exactly the examples party i holds in the simulation.
    """
    if partition not in ("iid", "dirichlet"):
        raise DataError(f"partition must be 'iid' or 'dirichlet', got {partition!r}")
    rng = np.random.default_rng(seed)
    size = min(len(train), n_parties * per_party)
    pool = [train[i] for i in np.sort(rng.choice(len(train), size=size, replace=False))]
    if partition == "iid":
        return pool, partition_iid(len(pool), n_parties, seed)
    return pool, partition_dirichlet(np.array([example.label for example in pool]), n_parties, alpha, seed)


def validation_split(n_examples: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(search indices, validation indices) of a party's examples: a seeded ``fraction`` of them (at least one,
    leaving at least one) is held out from its local search. With fraction 0, or a single example, the two
    sets are the same: every example both searches and scores."""
    everything = np.arange(n_examples)
    if fraction == 0 or n_examples < 2:
        return everything, everything
    held = min(max(1, round(fraction * n_examples)), n_examples - 1)
    order = np.random.default_rng(seed).permutation(n_examples)
    return np.sort(order[held:]), np.sort(order[:held])

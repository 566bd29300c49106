"""Who takes part and with what: the parties' seeded shares of a task, their seeds per round, the parties of each
round and the held-out set; one definition each for the simulator, the clients and the baselines.

A party is ``party-i``: a client started with ``--shard i`` holds exactly the examples the simulator gives party
i, draws the same seeds in the same rounds, and scores its share of the held-out rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fedbpt.backends import Backend, EncodedExample
from fedbpt.data import Example, class_histogram, federated_split
from fedbpt.errors import UserError
from fedbpt.job import prompted_model, spec_task
from fedbpt.objective import PromptedModel
from fedbpt.spec import JobSpec


def party_seed(job_seed: int, party: int, round_number: int) -> int:
    """A distinct, reproducible seed per party and round (the released code gave every client the same one)."""
    state = np.random.SeedSequence([job_seed, party, round_number]).generate_state(1)[0]
    return int(state % (2**31 - 2)) + 1  # pycma treats seed 0 as "random"


def party_names(spec: JobSpec) -> list[str]:
    return [f"party-{i}" for i in range(spec.federation.parties)]


def shares(spec: JobSpec, train: list[Example]) -> tuple[list[Example], list[np.ndarray]]:
    """The spec's seeded split of a task's training examples: (the pool dealt, each party's indices into it)."""
    data = spec.data
    return federated_split(
        train, spec.federation.parties, data.examples_per_party, data.partition, data.alpha, spec.seed
    )


def shard(spec: JobSpec, train: list[Example], index: int) -> list[Example]:
    """Party ``index``'s examples of the split: what a client started with ``--shard index`` holds."""
    parties = spec.federation.parties
    if not 0 <= index < parties:
        raise UserError(f"--shard must be in [0, {parties}) for this job's {parties} parties, got {index}")
    pool, indices = shares(spec, train)
    return [pool[i] for i in indices[index]]


def held_out_share(rows: list[Example], index: int, parties: int) -> list[Example]:
    """The held-out rows party ``index`` scores: every ``parties``-th, so the parties' shares make the whole."""
    return rows[index::parties]


def round_parties(spec: JobSpec, number: int) -> np.ndarray:
    """The sorted indices of the parties taking part in round ``number``, drawn from the job's seed, so every
    method run on a spec (FedBPT, FedAvg-BBT, FedPrompt, FedP-tuning) trains the same parties."""
    federation = spec.federation
    if federation.per_round == federation.parties:
        return np.arange(federation.parties)
    picker = np.random.default_rng([spec.seed, 1, number])
    return np.sort(picker.choice(federation.parties, size=federation.per_round, replace=False))


@dataclass
class Party:
    name: str
    examples: list[EncodedExample]
    labels: np.ndarray


@dataclass
class Federation:
    """What every method run on a spec shares: the prompted model, the parties, the held-out set."""

    model: PromptedModel
    parties: list[Party]
    histogram: np.ndarray  # (parties, classes)
    eval_set: list[EncodedExample]
    eval_labels: np.ndarray


def prepare(spec: JobSpec, backend: Backend) -> Federation:
    """The spec's model (with its first start), its parties' seeded shares of the training data, the held-out set."""
    task = spec_task(spec)
    model = prompted_model(spec, backend, task=task)
    pool, indices = shares(spec, task.load_train())
    labels = np.array([example.label for example in pool])
    encoded = model.encode(pool)
    parties = [
        Party(name, [encoded[j] for j in share], labels[share])
        for name, share in zip(party_names(spec), indices, strict=True)
    ]
    held_out = task.load_eval()
    if spec.data.eval_examples:
        held_out = held_out[: spec.data.eval_examples]
    return Federation(
        model,
        parties,
        class_histogram(labels, indices, task.n_labels),
        model.encode(held_out),
        np.array([row.label for row in held_out]),
    )


def zero_shot(federation: Federation) -> dict:
    """The bare template's held-out accuracy, raw and calibrated: the training-free baselines."""
    model = federation.model
    raw, calibrated = replace(model, calibrate=False), replace(model, calibrate=True)
    return {
        "zero_shot": raw.accuracy(None, federation.eval_set, federation.eval_labels),
        "zero_shot_calibrated": calibrated.accuracy(None, federation.eval_set, federation.eval_labels),
    }

"""One party of a server job: fetch the round, search locally, submit, report, until the job ends.

The loop only needs a ``PromptedModel``, so the full-precision client and the edge client share it;
the search and the seeds are the core's (``fedbpt.search``), exactly as in the simulator.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clients.api import Api, ApiError, ServerUnavailable, enroll
from fedbpt.aggregate import GlobalState
from fedbpt.backends import Backend
from fedbpt.data import Example, federated_split
from fedbpt.job import JobMismatch, prompted_model, search_config, spec_task
from fedbpt.models import ModelNotFound
from fedbpt.objective import Objective, PromptedModel
from fedbpt.projection import CACHE_LIMIT_BYTES
from fedbpt.protocol import decode_vector
from fedbpt.search import local_search, party_seed

LONG_POLL_S = 25.0
# What a party reports as a one-line error instead of a traceback.
PARTY_ERRORS = (ApiError, ServerUnavailable, JobMismatch, ModelNotFound, ValueError)


@dataclass(frozen=True)
class DataChoice:
    """Which examples this party holds. With ``shards`` > 0 (benchmark tasks), the party is shard
    ``shard`` of a seeded federated split, as in ``fedbpt simulate``; otherwise it uses its task's
    whole training file. It scores the global prompt on its share of the first ``eval_examples``
    held-out rows."""

    shard: int = 0
    shards: int = 0
    examples_per_party: int = 16
    partition: str = "dirichlet"
    alpha: float = 1.0
    eval_examples: int = 200
    data_dir: Path = Path(".")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def party_examples(spec: dict, choice: DataChoice) -> tuple[list[Example], list[Example]]:
    """(training examples, evaluation examples) of this party."""
    task = spec_task(spec, choice.data_dir)
    held_out = task.load_eval()[: choice.eval_examples] if choice.eval_examples else []
    if choice.shards <= 0:
        return task.load_train(), held_out
    if not 0 <= choice.shard < choice.shards:
        raise ValueError(f"--shard must be in [0, {choice.shards}), got {choice.shard}")
    pool, shares = federated_split(
        task.load_train(), choice.shards, choice.examples_per_party, choice.partition, choice.alpha, spec["seed"]
    )
    return [pool[i] for i in shares[choice.shard]], held_out[choice.shard :: choice.shards]


def run_party(api: Api, spec: dict, me: dict, model: PromptedModel, choice: DataChoice) -> dict:
    """Take part until the job finishes or is cancelled; returns the last round info."""
    job, name = me["job"], me["party"]
    train, held_out = party_examples(spec, choice)
    examples, labels = model.encode(train), np.array([example.label for example in train])
    eval_set, eval_labels = model.encode(held_out), np.array([example.label for example in held_out])
    config = search_config(spec)
    log(f"{name}: {len(train)} training examples, {len(held_out)} held-out; job {job}, {spec['rounds']} rounds")

    def report(info: dict) -> None:
        if len(eval_set):
            accuracy = model.accuracy(decode_vector(info["mean"]), eval_set, eval_labels)
            api.evaluate(job, info["round"], accuracy, len(eval_set))
            log(f"{name}: global prompt after round {info['round']}: accuracy {accuracy:.4f} on {len(eval_set)}")

    handled = -1  # the last round this party searched (or found already submitted)
    reported = -1
    while True:
        info = api.round(job, after=handled, wait=LONG_POLL_S)
        if info["round"] > reported:
            report(info)
            reported = info["round"]
        if info["status"] != "running":
            log(f"{name}: job {info['status']} at round {info['round']}")
            return info
        if info["round"] <= handled:
            continue
        round_number = info["round"]
        if not info["submitted"]:
            state = GlobalState(round_number, decode_vector(info["mean"]), info["sigma"])
            seed = party_seed(spec["seed"], me["index"], round_number)
            objective = Objective.for_round(model, examples, labels, config.loss, config.perturb_rate, seed)
            update = local_search(state, objective, config, seed, name, len(train)).to_dict()
            update.pop("party")
            try:
                api.submit(job, round_number, update)
                log(f"{name}: round {round_number} fitness {update['fitness']:.4f} ({update['seconds']:.1f} s)")
            except ApiError as error:
                if error.status != 409:
                    raise
                log(f"{name}: round {round_number} closed without this update ({error})")
        handled = round_number


def join_and_run(
    server: str,
    token: str | None,
    secret: str | None,
    ca_bundle: str | None,
    load_backend: Callable[[dict], Backend],
    choice: DataChoice,
    projection_cache_bytes: int = CACHE_LIMIT_BYTES,
) -> tuple[str, dict]:
    """Join a job (with a token, or by redeeming an enrollment secret), load this party's backend for the
    job's spec, check it against the job and take part until the end; returns (job id, last round info)."""
    if secret:
        token = enroll(server, secret, ca_bundle)["token"]
        log(f"enrolled; keep this token to rejoin: {token}")
    if not token:
        raise ValueError("pass --token (or FEDBPT_TOKEN) or --enroll")
    api = Api(server, token, ca_bundle)
    me = api.me()
    spec = api.spec(me["job"])
    model = prompted_model(spec, load_backend(spec), choice.data_dir, projection_cache_bytes)
    return me["job"], run_party(api, spec, me, model, choice)

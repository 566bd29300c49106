"""One party of a server job: fetch the round, answer it, submit, report accuracy, until the job ends.

The loop only needs a ``PromptedModel``, so the full-precision client and the edge client share it. A party's
answer to a round of any kind (the start round, a search round, a rank round, the final round) is the core's
``fedbpt.search.respond``, and ``--shard i`` gives it exactly the examples party i holds in ``fedbpt simulate``:
the same spec gives the same reports, so the server's rounds close as the simulator's do.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clients.api import RETRY_FOR_S, Api, ServerRefused, enroll
from fedbpt import __version__, rounds
from fedbpt.backends import Backend, EncodedExample
from fedbpt.data import Example
from fedbpt.errors import UserError
from fedbpt.federation import held_out_share, shard
from fedbpt.job import prompted_model, spec_task
from fedbpt.objective import PromptedModel
from fedbpt.projection import CACHE_LIMIT_BYTES
from fedbpt.protocol import GlobalState, Scores, Update
from fedbpt.search import respond
from fedbpt.spec import JobSpec, from_dict

LONG_POLL_S = 25.0


# What a party reports as a one-line error instead of a traceback.
@dataclass(frozen=True)
class DataChoice:
    """Which examples this party holds. With ``shard`` i, it is party i of the job's seeded federated split (the
    job's spec sets the parties, examples per party, partition and alpha) and scores every prompt on its share of
    the first ``eval_examples`` held-out rows; without, it uses its task's whole training file and those rows.
    ``eval_examples`` None takes the job's ``data.eval_examples``; 0 means all rows."""

    shard: int | None = None
    eval_examples: int | None = None
    data_dir: Path = Path(".")


def client_name(backend: Backend) -> str:
    """This party's User-Agent: the program, its engine and precision (a GGUF file's name says its quant)."""
    if hasattr(backend, "path"):  # llama.cpp on a GGUF file
        return f"fedbpt/{__version__} llama.cpp {backend.path.name}"
    return f"fedbpt/{__version__} transformers {str(backend.model.dtype).removeprefix('torch.')}"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ending(info: dict) -> str:
    """How the job ended, from its last round info: a finished job's open round is one past its final round."""
    if info["status"] == "finished":
        return f"finished after round {info['round'] - 1}"
    return f"{info['status']} at round {info['round']}"


def party_examples(spec: JobSpec, choice: DataChoice) -> tuple[list[Example], list[Example]]:
    """(training examples, held-out examples) of this party."""
    task = spec_task(spec, choice.data_dir)
    rows = spec.data.eval_examples if choice.eval_examples is None else choice.eval_examples
    held_out = task.load_eval()
    held_out = held_out[:rows] if rows else held_out
    if choice.shard is None:
        return task.load_train(), held_out
    return shard(spec, task.load_train(), choice.shard), held_out_share(held_out, choice.shard, spec.federation.parties)


def encoded(model: PromptedModel, examples: list[Example]) -> tuple[list[EncodedExample], np.ndarray]:
    return model.encode(examples), np.array([example.label for example in examples], dtype=int)


def describe(spec: JobSpec, state: GlobalState, report: Update | Scores) -> str:
    """A log line for a report, with the round counted as the server counts it (0 = the start round)."""
    kind = rounds.kind(spec, state)
    head = f"round {state.round} ({kind})"
    if kind == "start":
        losses = ", ".join(f"{start} {loss:.4f}" for start, loss in zip(spec.prompt.starts, report.losses, strict=True))
        return f"{head}: start losses {losses} ({report.seconds:.1f} s)"
    if kind == "final":
        return f"{head}: loss of round {state.mean_round}'s prompt {report.losses[0]:.4f} ({report.seconds:.1f} s)"
    if kind == "rank":
        return f"{head}: scored {len(report.losses)} means, best loss {min(report.losses):.4f} ({report.seconds:.1f} s)"
    return (
        f"{head}: loss of round {state.mean_round}'s prompt {report.loss:.4f}, local fitness {report.fitness:.4f} "
        f"({report.seconds:.1f} s)"
    )


def run_party(
    api: Api, spec: JobSpec, me: dict, model: PromptedModel, train: list[Example], held_out: list[Example]
) -> dict:
    """Take part until the job finishes or is cancelled; returns the last round info."""
    job, name = me["job"], me["party"]
    examples, labels = encoded(model, train)
    eval_set, eval_labels = encoded(model, held_out)
    log(
        f"{name}: {len(train)} training examples, {len(held_out)} held-out; job {job}: "
        f"{spec.federation.rounds} search rounds"
    )
    evaluated: set[int] = set()  # the prompt rounds whose accuracy this party reported
    handled = -1  # the last round this party answered (or found already answered)
    while True:
        info = api.round(job, after=handled, wait=LONG_POLL_S)
        if info["status"] != "running":
            log(f"{name}: job {job} {ending(info)}")
            return info
        if info["round"] <= handled:
            continue
        state = rounds.party_state(spec, info)
        if state.start and model.start != state.start:
            model = model.with_start(state.start)
        if state.start and state.mean_round not in evaluated and eval_set:
            report_accuracy(api, job, name, model, state, eval_set, eval_labels)
            evaluated.add(state.mean_round)
        if not info["submitted"]:
            answer(api, spec, me, model, state, examples, labels)
        handled = state.round


def report_accuracy(
    api: Api,
    job: str,
    name: str,
    model: PromptedModel,
    state: GlobalState,
    eval_set: list[EncodedExample],
    eval_labels: np.ndarray,
) -> None:
    """Score the round's global prompt on this party's held-out rows and report it, raw and calibrated (once per
    prompt round); with the chosen start's (round 0), the bare template's too: the zero-shot baselines."""
    both = model.accuracies(state.mean, eval_set, eval_labels)
    accuracy, accuracies = both[model.scoring], {"raw": both["raw"], "calibrated": both["calibrated"]}
    if state.mean_round == 0:
        bare = model.accuracies(None, eval_set, eval_labels)
        accuracies |= {"zero_shot_raw": bare["raw"], "zero_shot_calibrated": bare["calibrated"]}
    try:
        api.evaluate(job, state.mean_round, accuracy, len(eval_set), **accuracies)
    except ServerRefused as error:
        if error.status != 409:
            raise
        log(f"{name}: the server kept an earlier report for round {state.mean_round}'s prompt ({error})")
        return
    log(f"{name}: round {state.mean_round}'s prompt: accuracy {accuracy:.4f} on {len(eval_set)} held-out rows")


def answer(
    api: Api,
    spec: JobSpec,
    me: dict,
    model: PromptedModel,
    state: GlobalState,
    examples: list[EncodedExample],
    labels: np.ndarray,
) -> None:
    """This party's report for the open round, submitted; a round that closed without it is only logged."""
    report = respond(spec, state, model, examples, labels, me["index"], me["party"])
    try:
        api.submit(me["job"], state.round, rounds.report_body(spec, report))
    except ServerRefused as error:
        if error.status != 409:
            raise
        log(f"{me['party']}: round {state.round} closed without this report ({error})")
        return
    log(f"{me['party']}: {describe(spec, state, report)}")


def join_and_run(
    server: str,
    token: str | None,
    secret: str | None,
    ca_bundle: str | None,
    load_backend: Callable[[JobSpec], Backend],
    choice: DataChoice,
    projection_cache_bytes: int = CACHE_LIMIT_BYTES,
    retry_for: float = RETRY_FOR_S,
) -> tuple[str, dict]:
    """Join a job (with a token, or by redeeming an enrollment secret), load this party's backend for the
    job's spec, check it against the job and take part until the end; returns (job id, last round info).
    An unreachable server is retried for ``retry_for`` seconds at every request."""
    if secret:
        token = enroll(server, secret, ca_bundle, retry_for)["token"]
        log(f"enrolled; keep this token to rejoin: {token}")
    if not token:
        raise UserError("pass --token (or FEDBPT_TOKEN) or --enroll")
    api = Api(server, token, ca_bundle, retry_for)
    me = api.me()
    spec = from_dict(api.spec(me["job"]))
    train, held_out = party_examples(spec, choice)  # before the model loads: a wrong --shard fails at once
    backend = load_backend(spec)
    api.identify(client_name(backend))
    model = prompted_model(spec, backend, choice.data_dir, projection_cache_bytes)
    return me["job"], run_party(api, spec, me, model, train, held_out)

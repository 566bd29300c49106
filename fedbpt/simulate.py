"""Many parties in one process sharing one loaded model: FedBPT experiments without a network.

Each round, the round's parties answer it with ``search.respond`` on their own examples and
``rounds.close`` merges their reports, exactly as the clients and the server do. The results JSON is
rewritten after every round, so an interrupted run (Ctrl-C) still leaves a usable file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fedbpt import rounds
from fedbpt.backends import Backend, EncodedExample
from fedbpt.data import class_histogram, federated_split
from fedbpt.job import prompted_model, spec_task
from fedbpt.objective import PromptedModel
from fedbpt.protocol import GlobalState, encode_vector
from fedbpt.search import respond
from fedbpt.spec import JobSpec, from_dict, to_dict
from fedbpt.tracking import RunLog, provenance, round_event


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
    data = spec.data
    pool, shares = federated_split(
        task.load_train(), spec.federation.parties, data.examples_per_party, data.partition, data.alpha, spec.seed
    )
    labels = np.array([example.label for example in pool])
    encoded = model.encode(pool)
    parties = [Party(f"party-{i}", [encoded[j] for j in share], labels[share]) for i, share in enumerate(shares)]
    held_out = task.load_eval()
    if data.eval_examples:
        held_out = held_out[: data.eval_examples]
    return Federation(
        model,
        parties,
        class_histogram(labels, shares, task.n_labels),
        model.encode(held_out),
        np.array([row.label for row in held_out]),
    )


def round_parties(spec: JobSpec, number: int) -> np.ndarray:
    """The sorted indices of the parties taking part in round ``number``, drawn from the job's seed, so every
    method run on a spec (FedBPT, FedAvg-BBT, FedPrompt, FedP-tuning) trains the same parties."""
    federation = spec.federation
    if federation.per_round == federation.parties:
        return np.arange(federation.parties)
    picker = np.random.default_rng([spec.seed, 1, number])
    return np.sort(picker.choice(federation.parties, size=federation.per_round, replace=False))


def downlink(spec: JobSpec, state: GlobalState) -> dict:
    """What a party receives for a round: the server's round message (``GET /v1/jobs/{id}/round``)."""
    return {
        "job": "0" * 12,
        "status": "running",
        **rounds.round_message(spec, state),
        "deadline": 1.8e9,
        "submitted": False,
    }


def play_round(
    spec: JobSpec, federation: Federation, state: GlobalState, progress: Callable[[], object] = lambda: None
) -> tuple[GlobalState, dict]:
    """One round: its parties respond to it and ``rounds.close`` merges their reports. The record also holds the
    bytes a party sent and received, the queries the parties made and the round's time."""
    started = time.perf_counter()
    reports = []
    for index in round_parties(spec, state.round):
        party = federation.parties[index]
        reports.append(respond(spec, state, federation.model, party.examples, party.labels, int(index), party.name))
        progress()
    down = len(json.dumps(downlink(spec, state)))
    up = int(np.mean([len(json.dumps(rounds.report_body(spec, report))) for report in reports]))
    state, record = rounds.close(spec, state, reports)
    record["bytes_per_party"] = {"sent": up, "received": down}
    record["evaluations"] = int(sum(getattr(report, "evaluations", 0) for report in reports))
    record["seconds"] = time.perf_counter() - started
    return state, record


def start_round(spec: JobSpec, federation: Federation) -> tuple[GlobalState, dict | None]:
    """The state after the start round (and its record), or the initial state when the spec has one start."""
    state = rounds.initial(spec)
    if rounds.kind(spec, state) != "start":
        return state, None
    return play_round(spec, federation, state)


def write_json(path: Path, data: dict) -> None:
    """Replace ``path`` in one rename, so a reader (or a Ctrl-C) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1))
    partial.replace(path)


@contextmanager
def finishing(results: dict, save: Callable[[], None], bar: tqdm, started: float) -> Iterator[None]:
    """Around a federation's rounds: mark the results finished, or interrupted on Ctrl-C (which is absorbed, so
    the caller returns every finished round); then close the progress bar, add the total time and save."""
    try:
        yield
        results["status"] = "finished"
    except KeyboardInterrupt:
        results["status"] = "interrupted"
        tqdm.write("interrupted: results hold every finished round")
    finally:
        bar.close()
        results["seconds"] = time.perf_counter() - started
        save()


def zero_shot(federation: Federation) -> dict:
    """The bare template's held-out accuracy, raw and calibrated: the training-free baselines."""
    model = federation.model
    raw, calibrated = replace(model, calibrate=False), replace(model, calibrate=True)
    return {
        "zero_shot": raw.accuracy(None, federation.eval_set, federation.eval_labels),
        "zero_shot_calibrated": calibrated.accuracy(None, federation.eval_set, federation.eval_labels),
    }


def simulate(spec: JobSpec, backend: Backend, out: Path | None = None, eval_every: int = 1) -> dict:
    """Run the federation; return (and write to ``out``) the results.

    The global prompt is scored on the held-out set after every ``eval_every`` rounds, and the prompt the
    run returns (the best by pooled training loss) always.
    """
    started = time.perf_counter()
    federation = prepare(spec, backend)
    model, parties = federation.model, federation.parties
    results = {
        "spec": to_dict(spec),
        "status": "running",
        "model": backend.identity,
        "data": model.task.data_note,
        "projection_fingerprint": model.projection.fingerprint(),
        "eval_size": len(federation.eval_set),
        "party_examples": [len(party.labels) for party in parties],
        "party_class_histogram": federation.histogram.tolist(),
        "provenance": provenance(),
        "rounds": [],
        "accuracy": {},  # held-out accuracy of the prompt after round k, by k (calibrated when the spec calibrates)
        "accuracies": {},  # the same, raw and calibrated
    }
    log = RunLog(out.with_suffix(".events.jsonl")) if out is not None else None

    def save() -> None:
        if out is not None:
            write_json(out, results)

    def evaluate(state: GlobalState, z: np.ndarray, after_round: int) -> float:
        if str(after_round) not in results["accuracy"]:
            scorer = model.with_start(state.start)
            both = scorer.accuracies(z, federation.eval_set, federation.eval_labels)
            results["accuracies"][str(after_round)] = both
            results["accuracy"][str(after_round)] = both["calibrated" if model.calibrate else "raw"]
        return results["accuracy"][str(after_round)]

    results |= zero_shot(federation)
    tqdm.write(
        f"zero-shot {results['zero_shot']:.4f} (calibrated {results['zero_shot_calibrated']:.4f}) on "
        f"{len(federation.eval_set)} held-out examples"
    )
    if log is not None:
        baselines = {key: results[key] for key in ("zero_shot", "zero_shot_calibrated")}
        log.write({"event": "run", "spec": results["spec"], **results["provenance"], **baselines})
    state = rounds.initial(spec)
    total = sum(len(round_parties(spec, number)) for number in range(state.round, spec.federation.rounds + 2))
    bar = tqdm(total=total, desc="party rounds", unit="party")
    with finishing(results, save, bar, started):
        while not rounds.finished(spec, state):
            state, record = play_round(spec, federation, state, bar.update)
            if record["kind"] == "start" or (record["kind"] == "search" and record["round"] % eval_every == 0):
                record["accuracy"] = evaluate(state, state.mean, state.mean_round)
            record["elapsed"] = time.perf_counter() - started
            results["rounds"].append(record)
            results["state"] = state.to_dict()
            bar.set_postfix_str(progress_note(record))
            save()
            if log is not None:
                made = str(state.mean_round) if "accuracy" in record else None
                log.write(round_event(record, results["accuracies"].get(made)))
        if results["status"] == "running":
            finish(results, spec, state, evaluate)
    if log is not None:
        figures = {key: results[key] for key in ("status", "best_round", "final_accuracy", "seconds") if key in results}
        log.write({"event": "end", **figures})
        log.close()
    return results


def progress_note(record: dict) -> str:
    """The progress bar's note on a closed round: its pooled loss, the best round so far and the accuracy."""
    accuracy = f", accuracy {record['accuracy']:.4f}" if "accuracy" in record else ""
    loss = f"loss {record['loss']:.4f} (lower is better)"
    return f"round {record['round']}: {loss}, best round {record['best_round']}{accuracy}"


def finish(results: dict, spec: JobSpec, state: GlobalState, evaluate: Callable) -> None:
    """The figures of a finished run: the start's, the last search round's and the returned best prompt's."""
    best = rounds.best_prompt(state)
    results["start"] = state.start
    results["start_accuracy"] = evaluate(state, rounds.initial_z(spec), 0)
    results["last_round"] = state.mean_round
    results["last_accuracy"] = evaluate(state, state.mean, state.mean_round)
    results["best_round"] = best.round
    results["final_accuracy"] = evaluate(state, best.mean, best.round)
    results["prompt"] = {"round": best.round, "loss": best.loss, "z": encode_vector(best.mean), "start": state.start}


def summary_line(results: dict) -> str:
    """The machine-readable last line of ``fedbpt simulate``."""
    searched = [record for record in results["rounds"] if "bytes_per_party" in record and record["kind"] == "search"]
    per_round = int(np.mean([sum(r["bytes_per_party"].values()) for r in searched])) if searched else 0
    figures = {key: results.get(f"{key}_accuracy", float("nan")) for key in ("start", "last", "final")}
    return (
        f"task={from_dict(results['spec']).task_name} zero_shot={results['zero_shot']:.4f} "
        f"zero_shot_calibrated={results['zero_shot_calibrated']:.4f} "
        + " ".join(f"{key}={value:.4f}" for key, value in figures.items())
        + f" bytes_per_party_round={per_round}"
    )


def summary(results: dict) -> str:
    spec = from_dict(results["spec"])
    lines = [
        f"{spec.federation.aggregator} on {spec.task_name} with {spec.model.name}: {results['status']} after "
        f"{len(results['rounds'])} rounds in "
        f"{results.get('seconds', 0):.0f} s",
        f"  zero-shot            {results['zero_shot']:.4f} (calibrated {results['zero_shot_calibrated']:.4f})",
        "  (loss: the parties' pooled training loss of a prompt, lower is better; accuracy on the held-out rows)",
    ]
    for record in results["rounds"]:
        accuracy = f"accuracy {record['accuracy']:.4f}" if "accuracy" in record else " " * 15
        if record["kind"] == "start":
            losses = ", ".join(f"{name} {loss:.4f}" for name, loss in record["start_losses"].items())
            lines.append(f"  round {record['round']:3d}  start {record['start']!r} {accuracy}  (losses: {losses})")
        elif record["kind"] == "search":
            note = "  backtracked to the best" if record["backtracked"] else ""
            lines.append(
                f"  round {record['round']:3d}  {accuracy}  loss of round {record['scored_round']}'s prompt "
                f"{record['loss']:.4f}  step {record['sigma']:.3f}{note}"
            )
        else:
            scored = f"round {record['scored_round']}'s prompt"
            lines.append(f"  round {record['round']:3d}  final: loss of {scored} {record['loss']:.4f}")
    if "final_accuracy" in results:
        lines.append(
            f"  returned prompt: after round {results['best_round']}, accuracy {results['final_accuracy']:.4f} "
            f"({results['final_accuracy'] - results['zero_shot_calibrated']:+.4f} vs calibrated zero-shot)"
        )
    return "\n".join(lines)

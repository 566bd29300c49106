"""Many parties in one process sharing one loaded model: FedBPT experiments without a network.

Each round, the round's parties answer it with ``search.respond`` on their own examples and
``rounds.close`` merges their reports, exactly as the clients and the server do. The results JSON is
rewritten after every round, so an interrupted run (Ctrl-C) still leaves a usable file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fedbpt import privacy, rounds
from fedbpt.attacks import Attack, attacked, quantized_model
from fedbpt.backends import Backend
from fedbpt.federation import Federation, party_seed, prepare, round_parties, zero_shot
from fedbpt.protocol import GlobalState, encode_vector
from fedbpt.results import finishing, write_json
from fedbpt.search import respond
from fedbpt.spec import JobSpec, final_round, to_dict
from fedbpt.tracking import RunLog, provenance, round_event


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
    spec: JobSpec,
    federation: Federation,
    state: GlobalState,
    progress: Callable[[], object] = lambda: None,
    attack: Attack | None = None,
) -> tuple[GlobalState, dict]:
    """One round: its parties respond to it (the ``attack``'s parties dishonestly) and ``rounds.close`` merges
    their reports. The record also holds the bytes a party sent and received, the queries the parties made and
    the round's time."""
    started = time.perf_counter()
    reports = []
    for index in round_parties(spec, state.round):
        party = federation.parties[index]
        lying = attack is not None and index in attack.parties
        model = attack.model if lying and attack.model is not None else federation.model
        report = respond(spec, state, model, party.examples, party.labels, int(index), party.name)
        if lying:
            report = attacked(attack.kind, report, state, party_seed(spec.seed, int(index), state.round))
        reports.append(report)
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


def simulate(
    spec: JobSpec, backend: Backend, out: Path | None = None, eval_every: int = 1, attack: Attack | None = None
) -> dict:
    """Run the federation (with ``attack``, some parties lie); return (and write to ``out``) the results.

    The global prompt is scored on the held-out set after every ``eval_every`` rounds, and the prompt the
    run returns (the best by pooled training loss) always.
    """
    started = time.perf_counter()
    privacy.check_budget(spec)
    federation = prepare(spec, backend)
    if attack is not None and attack.kind == "quantized":
        attack = replace(attack, model=quantized_model(spec, federation.model))
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
        "attack": attack and {"kind": attack.kind, "parties": list(attack.parties)},
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
            results["accuracy"][str(after_round)] = both[model.scoring]
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
    total = sum(len(round_parties(spec, number)) for number in range(state.round, final_round(spec) + 1))
    bar = tqdm(total=total, desc="party rounds", unit="party")
    with finishing(results, save, bar, started):
        while not rounds.finished(spec, state):
            state, record = play_round(spec, federation, state, bar.update, attack)
            if record["kind"] == "start" or (record["kind"] != "final" and record["round"] % eval_every == 0):
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
    loss = f"loss {record['loss']:.4f} (lower is better)" if "loss" in record else "ranked the means"
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

"""FedPrompt and FedP-tuning federations: FedAvg of the parties' trained prompt tensors, weighted by examples.

The setting is the simulator's (the job spec: model, task, parties, partition, rounds, held-out set, seed)
and so is the results file, rewritten after every round so that Ctrl-C keeps finished rounds. Held-out
accuracy is calibrated like FedBPT's when the spec calibrates.
Communication is counted as the JSON a party would send and receive, with the tensor as base64 float32
like every vector on this project's wire.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fedbpt.backends import Backend, EncodedExample
from fedbpt.baselines import prompt_tuning
from fedbpt.baselines.prompt_tuning import LocalTraining
from fedbpt.federation import Federation, party_seed, prepare, round_parties
from fedbpt.objective import PromptedModel
from fedbpt.protocol import encode_vector
from fedbpt.results import finishing, write_json
from fedbpt.simulate import start_round
from fedbpt.spec import JobSpec, to_dict
from fedbpt.tracking import RunLog, provenance, round_event

GRADIENT_METHODS = ("fedprompt", "fedptuning")


def _soft_prompt_accuracy(federation: Federation, model: PromptedModel, prompt: np.ndarray) -> float:
    """Scored by the backend's own fast path and calibrated as FedBPT's prompts are."""
    backend = model.backend

    def logits(examples: list[EncodedExample]) -> np.ndarray:
        return backend.label_logits(prompt[None], examples, model.label_ids, model.placement)

    return model.accuracies_of(logits, federation.eval_set, federation.eval_labels)[model.scoring]


def _deep_prompt_accuracy(federation: Federation, model: PromptedModel, prefix: np.ndarray) -> float:
    def logits(examples: list[EncodedExample]) -> np.ndarray:
        return prompt_tuning.predict_logits(prompt_tuning.deep_prompt_logits, model, prefix, examples)[None]

    return model.accuracies_of(logits, federation.eval_set, federation.eval_labels)[model.scoring]


# method -> (starting parameters, one party's round, accuracy on the held-out set)
METHODS: dict[str, tuple[Callable, Callable, Callable]] = {
    "fedprompt": (prompt_tuning.initial_soft_prompt, prompt_tuning.fedprompt_round, _soft_prompt_accuracy),
    "fedptuning": (prompt_tuning.initial_deep_prompt, prompt_tuning.fedptuning_round, _deep_prompt_accuracy),
}


def upload_bytes(round_number: int, parameters: np.ndarray, n_examples: int) -> int:
    message = {"kind": "prompt", "round": round_number, "prompt": encode_vector(parameters.ravel()), "n": n_examples}
    return len(json.dumps(message))


def download_bytes(round_number: int, parameters: np.ndarray) -> int:
    return len(json.dumps({"round": round_number, "prompt": encode_vector(parameters.ravel())}))


def run_gradient(
    method: str,
    spec: JobSpec,
    training: LocalTraining,
    backend: Backend,
    out: Path | None = None,
    eval_every: int = 1,
) -> dict:
    """Run a FedPrompt or FedP-tuning federation from the spec's chosen start; return (and write) the results.

    The parties and their rounds are the simulator's for the same spec; the start is chosen as FedBPT's is
    (its start round), so every prompt method begins from the same prompt.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {GRADIENT_METHODS}, got {method!r}")
    initial, party_round, accuracy = METHODS[method]
    started = time.perf_counter()
    federation = prepare(spec, backend)
    state, start_record = start_round(spec, federation)
    model = federation.model.with_start(state.start)
    parameters = initial(model)
    results = {
        "method": method,
        "spec": to_dict(spec),
        "training": asdict(training),
        "status": "running",
        "model": backend.identity,
        "eval_size": len(federation.eval_set),
        "party_examples": [len(party.labels) for party in federation.parties],
        "party_class_histogram": federation.histogram.tolist(),
        "trainable_parameters": int(parameters.size),
        "start": state.start,
        "provenance": provenance(),
        "rounds": [start_record] if start_record else [],
        "accuracy": {},
    }
    log = RunLog(out.with_suffix(".events.jsonl")) if out is not None else None

    def save() -> None:
        if out is not None:
            write_json(out, results)

    results["accuracy"]["0"] = results["start_accuracy"] = accuracy(federation, model, parameters)
    tqdm.write(f"{method}: start {state.start!r} {results['start_accuracy']:.4f} on {len(federation.eval_set)}")
    save()
    rounds = spec.federation.rounds
    bar = tqdm(total=rounds * spec.federation.per_round, desc=f"{method} party rounds", unit="party")
    with finishing(results, save, bar, started):
        for round_number in range(1, rounds + 1):
            round_started = time.perf_counter()
            chosen = round_parties(spec, round_number)
            trained, stats, sent = [], [], []
            for index in chosen:
                party = federation.parties[index]
                seed = party_seed(spec.seed, int(index), round_number)
                local, local_stats = party_round(model, parameters, party.examples, party.labels, training, seed)
                trained.append(local)
                stats.append(local_stats)
                sent.append(upload_bytes(round_number, local, local_stats.n_examples))
                bar.update()
            weights = [s.n_examples for s in stats]
            received = download_bytes(round_number, parameters)
            parameters = np.average(np.stack(trained), axis=0, weights=weights).astype(np.float32)
            record = {
                "round": round_number,
                "kind": "search",
                "parties": [federation.parties[i].name for i in chosen],
                "loss": float(np.average([s.loss for s in stats], weights=weights)),
                "bytes_per_party": {"sent": int(np.mean(sent)), "received": received},
                "seconds": time.perf_counter() - round_started,
            }
            if round_number % eval_every == 0 or round_number == rounds:
                record["accuracy"] = results["accuracy"][str(round_number)] = accuracy(federation, model, parameters)
            record["elapsed"] = time.perf_counter() - started
            results["rounds"].append(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=record.get("accuracy", "-"))
            save()
            if log is not None:
                log.write(round_event(record))
    if results["status"] == "finished":
        results["final_accuracy"] = results["last_accuracy"] = results["accuracy"][str(rounds)]
        results["best_round"] = results["last_round"] = rounds
    if log is not None:
        log.write({"event": "end", "status": results["status"], "final_accuracy": results.get("final_accuracy")})
        log.close()
    return results

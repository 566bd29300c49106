"""FedPrompt and FedP-tuning federations: FedAvg of the parties' trained prompt tensors, weighted by examples.

The setting is the simulator's (``SimulationConfig``: model, task, parties, partition, rounds, held-out
set, seeds) and so is the results file, rewritten after every round so that Ctrl-C keeps finished rounds.
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

from fedbpt.backends import Backend
from fedbpt.baselines import prompt_tuning
from fedbpt.baselines.prompt_tuning import LocalTraining
from fedbpt.protocol import encode_vector
from fedbpt.search import party_seed
from fedbpt.simulate import Federation, SimulationConfig, finishing, prepare, write_json

GRADIENT_METHODS = ("fedprompt", "fedptuning")


def _soft_prompt_accuracy(federation: Federation, prompt: np.ndarray) -> float:
    """Scored by the backend's own fast path, exactly as FedBPT's prompts are."""
    model = federation.model
    logits = model.backend.label_logits(prompt[None], federation.eval_set, model.label_ids, model.placement)[0]
    return float((logits.argmax(axis=-1) == federation.eval_labels).mean())


def _deep_prompt_accuracy(federation: Federation, prefix: np.ndarray) -> float:
    logits = prompt_tuning.predict_logits(
        prompt_tuning.deep_prompt_logits, federation.model, prefix, federation.eval_set
    )
    return float((logits.argmax(axis=-1) == federation.eval_labels).mean())


# method -> (starting parameters, one party's round, accuracy on the held-out set)
METHODS: dict[str, tuple[Callable, Callable, Callable]] = {
    "fedprompt": (prompt_tuning.initial_soft_prompt, prompt_tuning.fedprompt_round, _soft_prompt_accuracy),
    "fedptuning": (prompt_tuning.initial_deep_prompt, prompt_tuning.fedptuning_round, _deep_prompt_accuracy),
}


def upload_bytes(party: str, round_number: int, parameters: np.ndarray, n_examples: int) -> int:
    message = {"party": party, "round": round_number, "prompt": encode_vector(parameters.ravel()), "n": n_examples}
    return len(json.dumps(message))


def download_bytes(round_number: int, parameters: np.ndarray) -> int:
    return len(json.dumps({"round": round_number, "prompt": encode_vector(parameters.ravel())}))


def run_gradient(
    method: str,
    config: SimulationConfig,
    training: LocalTraining,
    backend: Backend,
    out: Path | None = None,
) -> dict:
    """Run a FedPrompt or FedP-tuning federation; return (and write to ``out``) the results."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {GRADIENT_METHODS}, got {method!r}")
    initial, party_round, accuracy = METHODS[method]
    federation = prepare(config, backend)
    parameters = initial(federation.model)
    results = {
        "method": method,
        "config": asdict(config),
        "training": asdict(training),
        "status": "running",
        "model": backend.identity,
        "eval_size": len(federation.eval_set),
        "party_examples": [len(party.labels) for party in federation.parties],
        "party_class_histogram": federation.histogram.tolist(),
        "trainable_parameters": int(parameters.size),
        "rounds": [],
    }

    def save() -> None:
        if out is not None:
            write_json(out, results)

    started = time.perf_counter()
    results["initial_prompt_accuracy"] = accuracy(federation, parameters)
    tqdm.write(f"{method}: initial prompt {results['initial_prompt_accuracy']:.4f} on {len(federation.eval_set)}")
    save()
    bar = tqdm(total=config.rounds * config.per_round(), desc=f"{method} local rounds", unit="party")
    with finishing(results, save, bar, started):
        for round_number, chosen in enumerate(config.chosen_parties()):
            train_started = time.perf_counter()
            trained, stats, sent = [], [], []
            for index in chosen:
                party = federation.parties[index]
                seed = party_seed(config.seed, int(index), round_number)
                local, local_stats = party_round(
                    federation.model, parameters, party.examples, party.labels, training, seed
                )
                trained.append(local)
                stats.append(local_stats)
                sent.append(upload_bytes(party.name, round_number, local, local_stats.n_examples))
                bar.update()
            train_seconds = time.perf_counter() - train_started
            aggregate_started = time.perf_counter()
            weights = [s.n_examples for s in stats]
            received = download_bytes(round_number, parameters)
            parameters = np.average(np.stack(trained), axis=0, weights=weights).astype(np.float32)
            record = {
                "round": round_number + 1,
                "parties": [federation.parties[i].name for i in chosen],
                "train_loss": float(np.average([s.loss for s in stats], weights=weights)),
                "seconds": {"train": train_seconds, "aggregate": time.perf_counter() - aggregate_started},
                "bytes_per_party": {"sent": int(np.mean(sent)), "received": received},
            }
            if (round_number + 1) % config.eval_every == 0 or round_number + 1 == config.rounds:
                evaluate_started = time.perf_counter()
                record["accuracy"] = accuracy(federation, parameters)
                record["seconds"]["evaluate"] = time.perf_counter() - evaluate_started
            record["elapsed"] = time.perf_counter() - started
            results["rounds"].append(record)
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", acc=record.get("accuracy", "-"))
            save()
    return results

"""Parity of the llama.cpp backend with the transformers backend on the same weights.

One prompt z (a random draw at the job's step, as a search round's candidates are) is scored on SST-2 dev
sentences by SmolLM2-135M in transformers (fp32, the packaged Q4_1 weights dequantized) and by llama.cpp on the
packaged Q4_1 file and on f16, Q8_0 and Q4_0 files re-quantized from it (``fedbpt models prepare``).
Each backend builds its starting prompt p0 from its own embeddings, as a party does; the projection and
its scale are the job's. Prints prediction agreement, mean and max |logit difference| and accuracy.

Then what a party's local search needs from its model: that it ranks candidates as the reference does.
On each of the 4 Dirichlet shards of the mixed federation (``scripts/mixed_federation.sh``), 16 candidates
(z = 0 and 15 draws at the job's step) get the search's fitness (clean / perturbed loss) from each backend;
the last column is the Spearman correlation of the variant's fitness with the reference's, one per shard.

    .venv/bin/python scripts/parity_edge.py [--examples 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from _common import held_out

from clients.party import DataChoice, party_examples
from fedbpt.federation import party_seed
from fedbpt.job import pin, prompted_model
from fedbpt.models import load_backend, prepare
from fedbpt.objective import Objective, PromptedModel
from fedbpt.spec import JobSpec, from_dict

SHARDS = 4
CANDIDATES = 16


def shard_fitness(spec: JobSpec, model: PromptedModel, candidates: np.ndarray) -> list[np.ndarray]:
    """The search's fitness of each candidate on each shard of the mixed federation, under ``model``."""
    search, fitness = spec.search, []
    for shard in range(SHARDS):
        train, _ = party_examples(spec, DataChoice(shard=shard))
        examples = model.encode(train)
        labels = np.array([example.label for example in train])
        seed = party_seed(spec.seed, shard, 1)
        fitness.append(Objective.for_round(model, examples, labels, search.loss, search.perturb_rate, seed)(candidates))
    return fitness


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.argsort().argsort(), b.argsort().argsort())[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="q4_1,f16,q8_0,q4_0")
    args = parser.parse_args()
    reference = load_backend("smollm2-135m", dtype="float32", threads=args.threads)
    spec = pin(from_dict({"federation": {"parties": SHARDS}}), reference)  # the mixed federation's job
    step = spec.search.step
    z = step * np.random.default_rng(0).normal(size=spec.prompt.dim)
    model = prompted_model(spec, reference)
    rows, encoded, labels = held_out(model, args.examples)
    start = time.perf_counter()
    expected = model.logits(z, encoded)[0]
    seconds = time.perf_counter() - start
    print(f"transformers fp32: accuracy {(expected.argmax(-1) == labels).mean():.3f} ({seconds:.1f} s)")
    draws = step * np.random.default_rng(1).normal(size=(CANDIDATES - 1, len(z)))
    candidates = np.vstack([np.zeros(len(z)), draws])
    reference_fitness = shard_fitness(spec, model, candidates)
    columns = f"{'agreement':>9s} {'mean|diff|':>10s} {'max|diff|':>9s} {'accuracy':>8s} {'MiB':>6s} {'s':>5s}"
    print(f"{'llama.cpp file':16s} {columns}  fitness rank correlation per shard")
    for variant in args.variants.split(","):
        name = "smollm2-135m" if variant == "q4_1" else f"smollm2-135m:{variant}"
        if variant != "q4_1":
            prepare("smollm2-135m", variant)
        backend = load_backend(name, threads=args.threads, engine="llama.cpp")
        edge = prompted_model(spec, backend)
        start = time.perf_counter()
        logits = edge.logits(z, edge.encode(rows))[0]
        seconds = time.perf_counter() - start
        difference = np.abs(logits - expected)
        agreement = (logits.argmax(-1) == expected.argmax(-1)).mean()
        accuracy = (logits.argmax(-1) == labels).mean()
        size = os.path.getsize(backend.path) / 2**20
        figures = f"{agreement:9.3f} {difference.mean():10.4f} {difference.max():9.4f} {accuracy:8.3f} {size:6.1f}"
        ranks = [spearman(a, b) for a, b in zip(reference_fitness, shard_fitness(spec, edge, candidates), strict=True)]
        print(f"{variant:16s} {figures} {seconds:5.1f}  " + " ".join(f"{rank:.2f}" for rank in ranks))
    print(f"examples={len(rows)} load_average={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""One party's work in a round: score candidates, or search locally from the global (mean, step).

The local search is CMA-ES in pycma's ask/tell shape: it never loads a model, it asks an objective
(population -> losses) for fitness values, so the same code runs in the simulator, in the HTTP client and
on an edge device. ``zo_search`` is the forward-gradient baseline (zeroth-order SGD, as MeZO and FwdLLM tune
without backpropagation) on the same objective with the same number of queries per iteration or fewer.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import cma
import numpy as np

from fedbpt import privacy, rounds
from fedbpt.backends import EncodedExample
from fedbpt.data import validation_split
from fedbpt.federation import party_seed
from fedbpt.objective import Objective, PromptedModel
from fedbpt.protocol import GlobalState, Scores, Update, on_wire
from fedbpt.spec import JobSpec, SearchSpec

Loss = Callable[[np.ndarray], np.ndarray]


def cma_search(mean: np.ndarray, sigma: float, objective: Loss, search: SearchSpec, seed: int):
    """``search.iterations`` CMA-ES generations: (local mean, step before each generation, final step, queries)."""
    es = cma.CMAEvolutionStrategy(
        np.asarray(mean, dtype=float),
        sigma,
        {"popsize": search.population, "seed": seed, "verbose": -9, "maxiter": search.iterations},
    )
    sigmas = []
    for _ in range(search.iterations):
        sigmas.append(float(es.sigma))
        candidates = es.ask()
        es.tell(candidates, [float(loss) for loss in objective(np.asarray(candidates))])
    return np.asarray(es.mean, dtype=float), tuple(sigmas), float(es.sigma), search.iterations * search.population


def zo_search(mean: np.ndarray, sigma: float, objective: Loss, search: SearchSpec, seed: int):
    """Zeroth-order SGD: each iteration averages ``population // 2`` antithetic finite differences along random
    directions, with ``sigma`` as the difference's step, and moves ``learning_rate`` times the estimate."""
    rng = np.random.default_rng(seed)
    z = np.asarray(mean, dtype=float).copy()
    pairs = max(1, search.population // 2)
    for _ in range(search.iterations):
        directions = rng.standard_normal((pairs, len(z)))
        losses = objective(np.concatenate([z + sigma * directions, z - sigma * directions]))
        slopes = (losses[:pairs] - losses[pairs:]) / (2 * sigma)
        z -= search.learning_rate * (slopes[:, None] * directions).mean(axis=0)
    return z, (sigma,) * search.iterations, sigma, search.iterations * 2 * pairs


SEARCHES = {"cma-es": cma_search, "zo-sgd": zo_search}


def local_search(
    state: GlobalState,
    objective: Loss,
    search: SearchSpec,
    seed: int,
    party: str,
    n_examples: int,
    loss: float,
    wire: str = "float32",
) -> Update:
    """Search from the global state and report the local mean (rounded to the wire) and its fitness."""
    started = time.perf_counter()
    mean, sigmas, sigma, queries = SEARCHES[search.method](state.mean, state.sigma, objective, search, seed)
    mean = on_wire(mean, wire)
    fitness = float(objective(mean[None])[0])
    return Update(
        party=party,
        round=state.round,
        loss=loss,
        mean=mean,
        sigmas=sigmas,
        sigma=sigma,
        fitness=fitness,
        n_examples=n_examples,
        evaluations=queries + 1,
        seconds=time.perf_counter() - started,
    )


def respond(
    spec: JobSpec,
    state: GlobalState,
    model: PromptedModel,
    examples: list[EncodedExample],
    labels: np.ndarray,
    party_index: int,
    party: str,
) -> Update | Scores:
    """This party's report for the open round (``honest_report``), clipped and noised when the job is private."""
    report = honest_report(spec, state, model, examples, labels, party_index, party)
    return privacy.privatized(spec, state, report) if privacy.enabled(spec) else report


def honest_report(
    spec: JobSpec,
    state: GlobalState,
    model: PromptedModel,
    examples: list[EncodedExample],
    labels: np.ndarray,
    party_index: int,
    party: str,
) -> Update | Scores:
    """This party's report for the open round: its losses of the start candidates on all its examples (round 0),
    its update (a search round), its losses of a search round's means (a rank round), or its loss of the last
    prompt (the final round).

    With ``spec.data.validation`` > 0 a seeded share of the party's examples is kept from its local search, and
    the round's prompt is scored on those: the pooled loss that keeps the best prompt is then measured on
    examples no search has fitted."""
    started = time.perf_counter()
    kind = rounds.kind(spec, state)
    if kind == "start":
        zero = np.zeros((1, spec.prompt.dim))
        losses = tuple(
            float(model.with_start(start).loss(zero, examples, labels, spec.search.loss)[0])
            for start in spec.prompt.starts
        )
        return Scores(party, state.round, losses, len(labels), time.perf_counter() - started)
    if model.start != state.start:
        model = model.with_start(state.start)
    # Round 0 (the start round) draws nothing, so its seed is free to split the examples, the same way every round.
    searching, scoring = validation_split(len(labels), spec.data.validation, party_seed(spec.seed, party_index, 0))
    held = [examples[i] for i in scoring]
    if kind == "rank":  # the search round's means, each scored on examples that no search here has fitted
        losses = model.loss(np.stack(state.candidates), held, labels[scoring], spec.search.loss)
        scored = tuple(float(loss) for loss in losses)
        return Scores(party, state.round, scored, len(labels), time.perf_counter() - started)
    loss = float(model.loss(state.mean[None], held, labels[scoring], spec.search.loss)[0])
    if kind == "final":
        return Scores(party, state.round, (loss,), len(labels), time.perf_counter() - started)
    seed = party_seed(spec.seed, party_index, state.round)
    search_set = [examples[i] for i in searching]
    objective = Objective.for_round(
        model, search_set, labels[searching], spec.search.loss, spec.search.perturb_rate, seed
    )
    return local_search(state, objective, spec.search, seed, party, len(labels), loss, spec.wire)

"""One party's local search: CMA-ES from the global (mean, sigma), in pycma's ask/tell shape.

The search never loads a model: it asks an objective (population -> losses) for fitness values, so
the same code runs in the simulator, in the HTTP client and on an edge device.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import cma
import numpy as np

from fedbpt.aggregate import GlobalState, Update


@dataclass(frozen=True)
class SearchConfig:
    population: int = 5
    iterations: int = 8
    loss: str = "ce"
    perturb_rate: float = 0.5  # 0 turns FedBPT's perturbed-loss ratio off

    def __post_init__(self) -> None:
        if self.population < 2 or self.iterations < 1:
            raise ValueError("population must be at least 2 and iterations at least 1")
        if self.loss not in ("ce", "hinge"):
            raise ValueError(f"loss must be 'ce' or 'hinge', got {self.loss!r}")
        if not 0.0 <= self.perturb_rate < 1.0:
            raise ValueError(f"perturb_rate must be in [0, 1), got {self.perturb_rate}")


def party_seed(job_seed: int, party: int, round_number: int) -> int:
    """A distinct, reproducible seed per party and round (the released code gave every client the same one)."""
    state = np.random.SeedSequence([job_seed, party, round_number]).generate_state(1)[0]
    return int(state % (2**31 - 2)) + 1  # pycma treats seed 0 as "random"


def local_search(
    state: GlobalState,
    objective: Callable[[np.ndarray], np.ndarray],
    config: SearchConfig,
    seed: int,
    party: str,
    n_examples: int,
) -> Update:
    """Run ``config.iterations`` CMA-ES generations and report the local mean and its fitness."""
    started = time.perf_counter()
    es = cma.CMAEvolutionStrategy(
        np.asarray(state.mean, dtype=float),
        state.sigma,
        {"popsize": config.population, "seed": seed, "verbose": -9, "maxiter": config.iterations},
    )
    sigmas = []
    evaluations = 0
    for _ in range(config.iterations):
        sigmas.append(float(es.sigma))
        candidates = es.ask()
        losses = objective(np.asarray(candidates))
        evaluations += len(candidates)
        es.tell(candidates, [float(loss) for loss in losses])
    mean = np.asarray(es.mean, dtype=float)
    fitness = float(objective(mean[None])[0])
    return Update(
        party=party,
        round=state.round,
        mean=mean,
        sigmas=tuple(sigmas),
        sigma=float(es.sigma),
        fitness=fitness,
        n_examples=n_examples,
        evaluations=evaluations + 1,
        seconds=time.perf_counter() - started,
    )

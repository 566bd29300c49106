"""Server aggregation as small pure functions over the parties' reports of one search round.

Nothing here keeps hidden state or touches the network: the simulator and the server call the same
functions, and the same reports in any order give the same result. The round policy around them (the
start round, best-so-far, backtracking) is in ``fedbpt.rounds``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from fedbpt.protocol import InvalidUpdate, Scores, Update
from fedbpt.spec import MAX_NORM

MAX_SIGMA = 1e3
MAX_LOSS = 1e6


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_loss(name: str, value: object) -> None:
    if not (_is_integer(value) or isinstance(value, float)) or not 0 <= value <= MAX_LOSS:
        raise InvalidUpdate(f"{name} must be a finite number in [0, {MAX_LOSS:g}], got {value!r}")


def _check_examples(n_examples: object) -> None:
    if not _is_integer(n_examples) or n_examples < 1:
        raise InvalidUpdate(f"n_examples must be a positive integer, got {n_examples!r}")


def validate_update(update: Update, dim: int, iterations: int) -> None:
    """Raise InvalidUpdate with a reason if the update cannot be aggregated (its round is the caller's check)."""
    mean = np.asarray(update.mean)
    if mean.shape != (dim,):
        raise InvalidUpdate(f"mean has shape {mean.shape}, expected ({dim},)")
    if not np.all(np.isfinite(mean)):
        raise InvalidUpdate("mean contains NaN or infinite values")
    norm = float(np.linalg.norm(mean))
    if norm > MAX_NORM:
        raise InvalidUpdate(f"mean norm {norm:.6g} exceeds the bound {MAX_NORM:g}")
    if not 1 <= len(update.sigmas) <= iterations:
        raise InvalidUpdate(f"sigmas has {len(update.sigmas)} entries; send one per local iteration (1-{iterations})")
    sigmas = np.asarray((*update.sigmas, update.sigma), dtype=float)
    if not np.all(np.isfinite(sigmas)) or np.any(sigmas <= 0) or np.any(sigmas > MAX_SIGMA):
        raise InvalidUpdate(f"every sigma must be finite, positive and at most {MAX_SIGMA:g}")
    _check_loss("fitness", update.fitness)  # a loss, or FedBPT's ratio of two losses
    _check_loss("loss", update.loss)
    _check_examples(update.n_examples)


def validate_scores(scores: Scores, candidates: int) -> None:
    if len(scores.losses) != candidates:
        raise InvalidUpdate(f"losses has {len(scores.losses)} entries; this round scores {candidates} candidates")
    for loss in scores.losses:
        _check_loss("every loss", loss)
    _check_examples(scores.n_examples)


def distinct_parties(reports: list) -> None:
    if not reports:
        raise InvalidUpdate("no reports to aggregate")
    parties = [report.party for report in reports]
    if len(set(parties)) != len(parties):
        raise InvalidUpdate("more than one report from the same party")


def pooled(values: list[float], n_examples: list[int]) -> float:
    """The example-weighted mean: what the value would be on all the parties' examples together."""
    return float(np.average(values, weights=n_examples))


def trimmed_pooled(values: list[float], n_examples: list[int], trim: float) -> float:
    """The example-weighted mean of the values left after dropping the ``trim`` share of reports at each end: a
    party reporting a fake loss cannot move it past the honest ones."""
    order = np.argsort(values, kind="stable")
    cut = int(trim * len(values))
    kept = order[cut : len(values) - cut]
    return pooled([values[i] for i in kept], [n_examples[i] for i in kept])


def clipped(updates: list[Update], center: np.ndarray) -> list[Update]:
    """The updates with each mean's move from ``center`` (the round's global mean) clipped to the median move:
    one party cannot drag the new mean further than a typical party goes."""
    moves = [update.mean - center for update in updates]
    bound = float(np.median([np.linalg.norm(move) for move in moves]))
    scaled = []
    for update, move in zip(updates, moves, strict=True):
        norm = float(np.linalg.norm(move))
        factor = 1.0 if norm <= bound or norm == 0 else bound / norm
        scaled.append(replace(update, mean=center + factor * move))
    return scaled


def best_measured(updates: list[Update], losses: list[float], trim: float) -> list[Update]:
    """The updates left after dropping the ``trim`` share whose means others measured the worst ``losses`` for
    (ties: the later update goes), in their order."""
    cut = int(trim * len(updates))
    worst = set(np.argsort(losses, kind="stable")[len(updates) - cut :].tolist())
    return [update for i, update in enumerate(updates) if i not in worst]


def trimmed_mean(vectors: np.ndarray, trim: float) -> np.ndarray:
    """The coordinate-wise mean after dropping the ``trim`` share of the highest and lowest values in each."""
    cut = int(trim * len(vectors))
    ordered = np.sort(vectors, axis=0)
    return ordered[cut : len(vectors) - cut].mean(axis=0)


def log_weights(count: int) -> np.ndarray:
    """CMA-ES's positive recombination weights for the best ``count`` of a ranked population."""
    weights = np.log(count + 0.5) - np.log(np.arange(1, count + 1))
    return weights / weights.sum()


def recombination(updates: list[Update], ranking: str) -> tuple[list[Update], np.ndarray]:
    """The updates that enter the new mean, best first, and their weights (summing to 1).

    - ``fitness``: FedBPT's rule in this project so far: rank by self-reported fitness, recombine the better
      half with CMA-ES weights (a party with 2 examples can lead a round).
    - ``all``: the released code's rule: rank by fitness, recombine every mean (its server's CMA_mu).
    - ``examples``: rank by fitness, recombine every mean, each rank weight times the party's examples:
      the ranking still steers, but a party's say grows with the evidence behind its fitness.
    """
    ranked = sorted(updates, key=lambda update: (update.fitness, update.party))  # the name breaks ties
    if ranking == "fitness":
        chosen = ranked[: max(1, len(ranked) // 2)]
        return chosen, log_weights(len(chosen))
    if ranking == "all":
        return ranked, log_weights(len(ranked))
    if ranking == "examples":
        weights = log_weights(len(ranked)) * np.array([update.n_examples for update in ranked], dtype=float)
        return ranked, weights / weights.sum()
    raise ValueError(f"unknown ranking {ranking!r}")


def server_sigma(updates: list[Update], rule: str, local_population: int, better: int) -> float:
    """The released code's rule: sqrt(sum over all parties of sum_i sigma_i^2 / (|S| * mu_local)).

    The paper's rule: 2 * sqrt(sum over the ``better`` best parties of sum_i sigma_i^2 / (|S| * lambda_local)).
    """
    squares = [float(np.sum(np.square(update.sigmas))) for update in updates]
    if rule == "code":
        return math.sqrt(sum(squares) / (len(updates) * (local_population // 2)))
    if rule == "paper":
        return 2.0 * math.sqrt(sum(squares[:better]) / (len(updates) * local_population))
    raise ValueError(f"unknown step rule {rule!r}")


def fedbpt(
    sigma: float, updates: list[Update], ranking: str, rule: str, local_population: int
) -> tuple[np.ndarray, float]:
    """FedBPT: the parties' means are the server CMA-ES population, ranked by fitness; (mean, sigma).

    The step follows ``rule``; as in the released code, it never grows from one round to the next (both
    rules alone would grow it by about sqrt(local iterations / mu) every round).
    """
    chosen, weights = recombination(updates, ranking)
    mean = np.sum(weights[:, None] * np.stack([update.mean for update in chosen]), axis=0)
    ranked = sorted(updates, key=lambda update: (update.fitness, update.party))
    return mean, min(server_sigma(ranked, rule, local_population, len(chosen)), sigma)


def fedavg(updates: list[Update]) -> tuple[np.ndarray, float]:
    """FedAvg-BBT: the example-weighted average of the parties' means and final step sizes; (mean, sigma)."""
    ordered = sorted(updates, key=lambda update: update.party)
    weights = np.array([update.n_examples for update in ordered], dtype=float)
    weights /= weights.sum()
    mean = np.sum(weights[:, None] * np.stack([update.mean for update in ordered]), axis=0)
    return mean, float(np.dot(weights, [update.sigma for update in ordered]))

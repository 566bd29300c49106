"""Server aggregation as pure functions: (global state, client updates) -> next global state.

Nothing here keeps hidden state or touches the network: the simulator and the server call the same
functions, and the same inputs in the same order always give the same output. States and updates
are plain JSON (vectors as base64 float32, as on the wire); no pickle anywhere.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
from cma.recombination_weights import RecombinationWeights

from fedbpt.protocol import decode_vector, encode_vector

SIGMA_RULES = ("code", "paper")
MAX_NORM = 1e4
MAX_SIGMA = 1e3


class InvalidUpdate(ValueError):
    """An update the server must refuse; the message is the reason."""


@dataclass(frozen=True)
class GlobalState:
    round: int
    mean: np.ndarray
    sigma: float

    @classmethod
    def initial(cls, dim: int, sigma0: float) -> GlobalState:
        return cls(0, np.zeros(dim), float(sigma0))

    def to_dict(self) -> dict:
        return {"round": self.round, "mean": encode_vector(self.mean), "sigma": self.sigma}

    @classmethod
    def from_dict(cls, data: dict) -> GlobalState:
        return cls(int(data["round"]), decode_vector(data["mean"]), float(data["sigma"]))


@dataclass(frozen=True)
class Update:
    """What one party sends after its local search in a round."""

    party: str
    round: int
    mean: np.ndarray
    sigmas: tuple[float, ...]  # the local step size before each local iteration
    sigma: float  # the local step size after the last iteration
    fitness: float  # loss of the local mean (lower is better)
    n_examples: int
    evaluations: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["mean"] = encode_vector(self.mean)
        data["sigmas"] = list(self.sigmas)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Update:
        """Parse a wire update; a missing or unknown field, or a bad vector, is an InvalidUpdate."""
        expected = {field.name for field in fields(cls)}
        if (
            not isinstance(data, dict)
            or not {"party", "round", "mean", "sigmas", "sigma", "fitness", "n_examples"} <= set(data) <= expected
        ):
            raise InvalidUpdate(f"an update needs the fields {sorted(expected)} (evaluations and seconds optional)")
        try:
            mean = decode_vector(data["mean"])
            sigmas = tuple(float(s) for s in data["sigmas"])
        except (TypeError, ValueError) as error:
            raise InvalidUpdate(f"malformed mean or sigmas: {error}") from None
        return cls(**{**data, "mean": mean, "sigmas": sigmas})


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate(state: GlobalState, update: Update) -> None:
    """Raise InvalidUpdate with a reason if the update cannot be aggregated into this state."""
    dim = len(state.mean)
    mean = np.asarray(update.mean)
    if not _is_integer(update.round):
        raise InvalidUpdate(f"round must be an integer, got {update.round!r}")
    if update.round != state.round:
        raise InvalidUpdate(
            f"update from {update.party!r} is for round {update.round}, the open round is {state.round}"
        )
    if mean.shape != (dim,):
        raise InvalidUpdate(f"mean has shape {mean.shape}, expected ({dim},)")
    if not np.all(np.isfinite(mean)):
        raise InvalidUpdate("mean contains NaN or infinite values")
    if np.linalg.norm(mean) > MAX_NORM:
        raise InvalidUpdate(f"mean norm {np.linalg.norm(mean):.3g} exceeds the bound {MAX_NORM:g}")
    sigmas = np.asarray((*update.sigmas, update.sigma), dtype=float)
    if len(update.sigmas) == 0:
        raise InvalidUpdate("sigmas is empty: send the local step size of every local iteration")
    if not np.all(np.isfinite(sigmas)) or np.any(sigmas <= 0) or np.any(sigmas > MAX_SIGMA):
        raise InvalidUpdate(f"every sigma must be finite, positive and at most {MAX_SIGMA:g}")
    if not (_is_integer(update.fitness) or isinstance(update.fitness, float)) or not math.isfinite(update.fitness):
        raise InvalidUpdate("fitness must be a finite number")
    if not _is_integer(update.n_examples) or update.n_examples < 1:
        raise InvalidUpdate(f"n_examples must be a positive integer, got {update.n_examples!r}")


def _checked(state: GlobalState, updates: list[Update]) -> list[Update]:
    if not updates:
        raise InvalidUpdate("no updates to aggregate")
    parties = [update.party for update in updates]
    if len(set(parties)) != len(parties):
        raise InvalidUpdate("more than one update from the same party")
    for update in updates:
        validate(state, update)
    # Rank by fitness; the party name breaks ties so the result never depends on arrival order.
    return sorted(updates, key=lambda update: (update.fitness, update.party))


def server_sigma(ranked: list[Update], rule: str, local_population: int) -> float:
    """The released code's rule: sqrt(sum over all parties of sum_i sigma_i^2 / (|S| * mu_local)).

    The paper's rule: 2 * sqrt(sum over the better half of parties of sum_i sigma_i^2 / (|S| * lambda_local)).
    """
    squares = [float(np.sum(np.square(update.sigmas))) for update in ranked]
    if rule == "code":
        return math.sqrt(sum(squares) / (len(ranked) * RecombinationWeights(local_population).mu))
    if rule == "paper":
        better = squares[: max(1, len(ranked) // 2)]
        return 2.0 * math.sqrt(sum(better) / (len(ranked) * local_population))
    raise ValueError(f"unknown sigma rule {rule!r}; use one of {SIGMA_RULES}")


def fedbpt(
    state: GlobalState,
    updates: list[Update],
    sigma_rule: str = "code",
    local_population: int = 5,
    sigma_floor: float = 0.0,
) -> GlobalState:
    """FedBPT: the parties' means are the server CMA-ES population, ranked by fitness.

    The new mean is CMA-ES's rank-weighted recombination of the better half of the means (pycma's
    default positive weights for population = number of parties). The step size follows
    ``sigma_rule``; as in the released code, it never grows from one round to the next (both rules
    alone would grow it by about sqrt(local iterations / mu) every round) and never falls below
    ``sigma_floor``.
    """
    ranked = _checked(state, updates)
    weights = np.asarray([1.0] if len(ranked) == 1 else RecombinationWeights(len(ranked)).positive_weights)
    mean = np.sum(weights[:, None] * np.stack([update.mean for update in ranked[: len(weights)]]), axis=0)
    sigma = max(min(server_sigma(ranked, sigma_rule, local_population), state.sigma), sigma_floor)
    return replace(state, round=state.round + 1, mean=mean, sigma=sigma)


def fedavg(state: GlobalState, updates: list[Update]) -> GlobalState:
    """FedAvg-BBT: the example-weighted average of the parties' means and final step sizes."""
    ranked = _checked(state, updates)
    weights = np.array([update.n_examples for update in ranked], dtype=float)
    weights /= weights.sum()
    mean = np.sum(weights[:, None] * np.stack([update.mean for update in ranked]), axis=0)
    sigma = float(np.dot(weights, [update.sigma for update in ranked]))
    return replace(state, round=state.round + 1, mean=mean, sigma=sigma)


AGGREGATORS = ("fedbpt", "fedavg")


def apply(
    aggregator: str,
    state: GlobalState,
    updates: list[Update],
    sigma_rule: str = "code",
    local_population: int = 5,
    sigma_floor: float = 0.0,
) -> GlobalState:
    """The next state under the named rule; what the simulator and the server both call."""
    if aggregator == "fedavg":
        return fedavg(state, updates)
    if aggregator == "fedbpt":
        return fedbpt(state, updates, sigma_rule, local_population, sigma_floor)
    raise ValueError(f"unknown aggregator {aggregator!r}; use one of {AGGREGATORS}")

"""What travels between the parties and the server: the reports (``Update``, ``Scores``), the global state, and
their JSON encoding, with vectors as base64 little-endian floats.

A job's ``wire`` setting picks float16 (the default: 1,000 bytes for a 500-number vector) or float32. Every
vector that travels is first rounded to that precision where it is made (``on_wire``), so what a party
searched from, what the server aggregated and what the simulator computed are the same numbers.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import asdict, dataclass, fields

import numpy as np

DTYPES = {"float16": "<f2", "float32": "<f4"}


def on_wire(vector: np.ndarray, wire: str) -> np.ndarray:
    """``vector`` rounded to the wire's precision (float64 again, so arithmetic stays exact after it)."""
    return np.asarray(vector, dtype=DTYPES[wire]).astype(np.float64)


def encode_vector(vector: np.ndarray, wire: str = "float32") -> str:
    return base64.b64encode(np.asarray(vector, dtype=DTYPES[wire]).tobytes()).decode("ascii")


def decode_vector(data: str | list[float], wire: str = "float32") -> np.ndarray:
    """A float64 array from base64 little-endian floats of the wire's precision, or from a plain list."""
    if isinstance(data, list):
        return np.asarray(data, dtype=np.float64)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError("vector is neither a list of numbers nor valid base64") from None
    width = np.dtype(DTYPES[wire]).itemsize
    if len(raw) % width:
        raise ValueError(f"vector has {len(raw)} bytes, not a whole number of {wire} values")
    return np.frombuffer(raw, dtype=DTYPES[wire]).astype(np.float64)


class InvalidUpdate(ValueError):
    """A report the server must refuse; the message is the reason."""


@dataclass(frozen=True)
class Update:
    """What one party sends after its local search in a round."""

    party: str
    round: int
    loss: float  # calibrated training loss of the round's global prompt (the mean the search started from)
    mean: np.ndarray
    sigmas: tuple[float, ...]  # the local step size before each local iteration
    sigma: float  # the local step size after the last iteration
    fitness: float  # the local objective at the local mean (lower is better)
    n_examples: int
    evaluations: int = 0
    seconds: float = 0.0

    def to_dict(self, wire: str = "float32") -> dict:
        return {**asdict(self), "mean": encode_vector(self.mean, wire), "sigmas": list(self.sigmas)}

    @classmethod
    def from_dict(cls, data: dict, wire: str = "float32") -> Update:
        """Parse a stored or wire update; a missing or unknown field, or a bad vector, is an InvalidUpdate."""
        required = {"party", "round", "loss", "mean", "sigmas", "sigma", "fitness", "n_examples"}
        if not isinstance(data, dict) or not required <= set(data) <= {field.name for field in fields(cls)}:
            raise InvalidUpdate(f"an update needs the fields {sorted(required)} (evaluations and seconds optional)")
        try:
            mean = decode_vector(data["mean"], wire)
            sigmas = tuple(float(s) for s in data["sigmas"])
        except (TypeError, ValueError) as error:
            raise InvalidUpdate(f"malformed mean or sigmas: {error}") from None
        return cls(**{**data, "mean": mean, "sigmas": sigmas})


@dataclass(frozen=True)
class Scores:
    """What one party sends in a scoring round: its training loss of each candidate prompt."""

    party: str
    round: int
    losses: tuple[float, ...]
    n_examples: int
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "losses": list(self.losses)}

    @classmethod
    def from_dict(cls, data: dict) -> Scores:
        return cls(**{**data, "losses": tuple(float(loss) for loss in data["losses"])})


@dataclass(frozen=True)
class Best:
    round: int  # the prompt after this round (0: the chosen start, z = 0)
    mean: np.ndarray
    loss: float | None  # its pooled training loss (None before any was scored)


@dataclass(frozen=True)
class GlobalState:
    round: int  # the open round: 0 chooses the start, then the spec's ``round_kinds``
    mean: np.ndarray  # the round's global prompt
    sigma: float  # the step the round's local searches start with
    start: str = ""  # the chosen starting prompt ("" while round 0 is open)
    mean_round: int = 0  # the round after which ``mean`` was the global prompt
    best: Best | None = None
    pending: tuple[Update, ...] = ()  # robust "cross": the search round's updates the open rank round ranks
    candidates: tuple[np.ndarray, ...] = ()  # the means a rank round's parties score (a party knows only these)

    def to_dict(self) -> dict:
        best = self.best and {"round": self.best.round, "mean": encode_vector(self.best.mean), "loss": self.best.loss}
        return {
            "round": self.round,
            "mean": encode_vector(self.mean),
            "sigma": self.sigma,
            "start": self.start,
            "mean_round": self.mean_round,
            "best": best,
            "pending": [update.to_dict() for update in self.pending],
        }

    @classmethod
    def from_dict(cls, data: dict) -> GlobalState:
        best = data["best"] and Best(data["best"]["round"], decode_vector(data["best"]["mean"]), data["best"]["loss"])
        pending = tuple(Update.from_dict(update) for update in data.get("pending", []))
        return cls(
            data["round"],
            decode_vector(data["mean"]),
            data["sigma"],
            data["start"],
            data["mean_round"],
            best,
            pending,
            tuple(update.mean for update in pending),
        )

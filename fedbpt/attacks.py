"""Parties that lie, to measure robust aggregation: what a dishonest party sends in place of its honest report.

- ``fake-loss``: a near-zero loss for every prompt it scores and a near-zero fitness, with a random mean
  inside the server's norm bound: it claims the best search and pulls the global mean anywhere.
- ``negate``: honest losses, but the global mean minus its honest move: it pushes the search backwards.

A badly quantized party needs no code here: it is an honest party on a worse model (``scripts/mixed_federation.sh``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fedbpt.errors import OptionError
from fedbpt.protocol import GlobalState, Scores, Update
from fedbpt.spec import MAX_NORM

ATTACKS = ("fake-loss", "negate")
FAKE_LOSS = 1e-3


@dataclass(frozen=True)
class Attack:
    kind: str
    parties: tuple[int, ...]  # the dishonest parties' indices

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise OptionError(f"--attack must be one of {', '.join(ATTACKS)}, got {self.kind!r}")


def attacked(kind: str, report: Update | Scores, state: GlobalState, seed: int) -> Update | Scores:
    """The report a dishonest party sends in place of its honest ``report`` for the round ``state``."""
    if kind == "negate":
        return replace(report, mean=2 * state.mean - report.mean) if isinstance(report, Update) else report
    if isinstance(report, Scores):
        return replace(report, losses=tuple(FAKE_LOSS for _ in report.losses))
    direction = np.random.default_rng(seed).normal(size=report.mean.shape)
    mean = direction / np.linalg.norm(direction) * MAX_NORM / 2
    return replace(report, mean=mean, loss=FAKE_LOSS, fitness=FAKE_LOSS)

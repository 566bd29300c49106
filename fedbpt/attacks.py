"""Parties that lie, to measure robust aggregation: what a dishonest party sends in place of its honest report.

- ``fake-loss``: a near-zero loss for every prompt it scores and a near-zero fitness, with a random mean
  inside the server's norm bound: it claims the best search and pulls the global mean anywhere.
- ``negate``: honest losses, but the global mean minus its honest move: it pushes the search backwards.
- ``quantized``: an honest party on a badly quantized copy of the model (llama.cpp q4_0): its losses rank
  prompts almost at random and its moves follow them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fedbpt.errors import OptionError
from fedbpt.objective import PromptedModel
from fedbpt.protocol import GlobalState, Scores, Update
from fedbpt.spec import MAX_NORM, JobSpec

ATTACKS = ("fake-loss", "negate", "quantized")
FAKE_LOSS = 1e-3


@dataclass(frozen=True)
class Attack:
    kind: str
    parties: tuple[int, ...]  # the dishonest parties' indices
    model: PromptedModel | None = None  # "quantized": the model they run

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise OptionError(f"--attack must be one of {', '.join(ATTACKS)}, got {self.kind!r}")


def attacked(kind: str, report: Update | Scores, state: GlobalState, seed: int) -> Update | Scores:
    """The report a dishonest party sends in place of its honest ``report`` for the round ``state``."""
    if kind == "quantized":
        return report
    if kind == "negate":
        return replace(report, mean=2 * state.mean - report.mean) if isinstance(report, Update) else report
    if isinstance(report, Scores):
        return replace(report, losses=tuple(FAKE_LOSS for _ in report.losses))
    direction = np.random.default_rng(seed).normal(size=report.mean.shape)
    mean = direction / np.linalg.norm(direction) * MAX_NORM / 2
    return replace(report, mean=mean, loss=FAKE_LOSS, fitness=FAKE_LOSS)


def quantized_model(spec: JobSpec, model: PromptedModel, quant: str = "q4_0") -> PromptedModel:
    """The spec's packaged model re-quantized (once, into the cache) and run by llama.cpp, with the same task,
    projection and start as ``model``: what a party on a badly quantized copy scores with."""
    from fedbpt.job import pin, prompted_model
    from fedbpt.models import PACKAGED, load_llama_backend, prepare

    base = spec.model.name.partition(":")[0]
    if base not in PACKAGED:
        raise OptionError(f"--attack quantized re-quantizes a packaged model ({sorted(PACKAGED)}), not {base!r}")
    prepare(base, quant)
    pinned = pin(spec, model.backend)
    return prompted_model(pinned, load_llama_backend(f"{base}:{quant}"), task=model.task).with_start(model.start)

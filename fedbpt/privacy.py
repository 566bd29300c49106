"""Differential privacy on uploads (``spec.privacy``): what a party does before sending, and what it costs.

Each party clips its release and adds Gaussian noise of ``noise`` times the clip, with randomness the server
cannot know (the operating system's, never a seed derived from the job's): its move from the global mean
(L2 norm at most ``clip``), and each loss or fitness it reports (to ``[0, loss_clip]``). The step sizes it
reports are replaced by the round's broadcast step, which carries nothing about its data. Held-out accuracy
reports use held-out rows, not the party's private examples, and cost nothing.

Every clipped number or vector is one Gaussian mechanism with noise multiplier ``noise``; a job's releases
per party are the start round's losses, three per search round (move, loss, fitness), one per mean it scores
in a rank round (robust ``cross``) and the final loss.
The server adds them up with Google's ``dp-accounting`` (RDP accountant): the epsilon at ``delta`` after each
round goes into the round's record, and a job whose total would pass its budget is refused before it starts.
Only the server and the simulator account; a party (the edge client too) needs numpy alone.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedbpt.errors import UserError
from fedbpt.protocol import GlobalState, Scores, Update, on_wire
from fedbpt.spec import JobSpec, round_kinds


def enabled(spec: JobSpec) -> bool:
    return spec.privacy.clip > 0


def _noised_loss(value: float, spec: JobSpec, rng: np.random.Generator) -> float:
    privacy = spec.privacy
    noised = min(max(value, 0.0), privacy.loss_clip) + rng.normal(0.0, privacy.noise * privacy.loss_clip)
    return float(min(max(noised, 0.0), privacy.loss_clip))  # clamping after the noise is post-processing: free


def privatized(spec: JobSpec, state: GlobalState, report: Update | Scores) -> Update | Scores:
    """The report clipped and noised as ``spec.privacy`` says, with fresh operating-system randomness."""
    rng = np.random.default_rng()
    if isinstance(report, Scores):
        return replace(report, losses=tuple(_noised_loss(loss, spec, rng) for loss in report.losses))
    privacy = spec.privacy
    move = report.mean - state.mean
    norm = float(np.linalg.norm(move))
    move = move * min(1.0, privacy.clip / norm) if norm > 0 else move
    move = move + rng.normal(0.0, privacy.noise * privacy.clip, size=move.shape)
    return replace(
        report,
        mean=on_wire(state.mean + move, spec.wire),
        loss=_noised_loss(report.loss, spec, rng),
        fitness=_noised_loss(report.fitness, spec, rng),
        sigmas=(state.sigma,) * len(report.sigmas),
        sigma=state.sigma,
    )


def releases(spec: JobSpec, rounds_closed: list[str]) -> int:
    """Gaussian releases per party after the rounds of these kinds ("start", "search", "rank", "final")."""
    per_kind = {"start": len(spec.prompt.starts), "search": 3, "rank": spec.federation.per_round, "final": 1}
    return sum(per_kind[kind] for kind in rounds_closed)


def epsilon(spec: JobSpec, count: int) -> float:
    """Epsilon at ``spec.privacy.delta`` of ``count`` Gaussian releases with the spec's noise multiplier."""
    if count == 0:
        return 0.0
    import dp_accounting

    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(spec.privacy.noise), count=count)
    return float(accountant.get_epsilon(spec.privacy.delta))


def job_kinds(spec: JobSpec) -> list[str]:
    """The kinds of every round of a job, in order."""
    start = ["start"] if len(spec.prompt.starts) > 1 else []  # one start (an initial z has one): no start round
    return start + round_kinds(spec)


def epsilon_after_round(spec: JobSpec, round_number: int) -> float:
    """Epsilon spent per party once round ``round_number`` has closed (round 0 is the start round, if any)."""
    kinds = job_kinds(spec)
    closed = round_number + 1 if kinds[0] == "start" else round_number
    return epsilon(spec, releases(spec, kinds[:closed]))


def check_budget(spec: JobSpec) -> None:
    """Refuse a job whose whole run would spend more than its privacy budget."""
    privacy = spec.privacy
    if not enabled(spec) or privacy.epsilon == 0:
        return
    total = epsilon(spec, releases(spec, job_kinds(spec)))
    if total <= privacy.epsilon:
        return
    affordable = 0
    while affordable < spec.federation.rounds:
        kinds = job_kinds(replace(spec, federation=replace(spec.federation, rounds=affordable + 1)))
        if epsilon(spec, releases(spec, kinds)) > privacy.epsilon:
            break
        affordable += 1
    raise UserError(
        f"privacy: the job's {spec.federation.rounds} search rounds spend epsilon {total:.3g} at delta "
        f"{privacy.delta:g}, over its budget {privacy.epsilon:g}: use at most {affordable} rounds, or more noise"
    )

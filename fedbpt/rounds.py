"""A job's rounds as pure functions: (spec, state, reports) -> (next state, record).

Round 0 chooses the start: every party scores each candidate starting prompt (``spec.prompt.starts``, at z = 0) on
its training data and the example-weighted best wins (with a single candidate there is no round 0). Then R search
rounds: each party first scores the round's global prompt on its training data (the calibrated loss,
example-weighted over the parties: the *pooled* loss), then runs its local search from it. Under the robust rule
``cross`` each search round is followed by a rank round: every party scores all the search round's means on its
held-back share, and the means the parties measured worst are dropped before the usual aggregation, so a mean its
sender's claims alone carried cannot lead the round. The final round scores the last prompt (``spec.round_kinds``
lists them). The state keeps the best prompt so far by pooled loss; when a round's prompt scores worse than the
best, the next search round restarts from the best with a smaller step (backtracking), so a job cannot end below
its start. What a job returns is the best prompt, with its round.

The simulator and the server call ``close`` with the same reports and get the same state.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedbpt import aggregate, privacy
from fedbpt.protocol import Best, GlobalState, InvalidUpdate, Scores, Update, decode_vector, encode_vector, on_wire
from fedbpt.spec import JobSpec, final_round, round_kind

KINDS = ("start", "search", "rank", "final")


def initial(spec: JobSpec) -> GlobalState:
    """Round 0 chooses among several starts; with one, the search opens at round 1 from the spec's initial z."""
    starts = spec.prompt.starts
    if len(starts) == 1:
        return GlobalState(1, initial_z(spec), spec.search.step, starts[0])
    return GlobalState(0, np.zeros(spec.prompt.dim), spec.search.step)


def initial_z(spec: JobSpec) -> np.ndarray:
    """The prompt before any search: a learned prompt's z (``--start-from``), or zeros (the start itself)."""
    return decode_vector(spec.prompt.initial) if spec.prompt.initial else np.zeros(spec.prompt.dim)


def kind(spec: JobSpec, state: GlobalState) -> str:
    if not state.start:
        return "start"
    return round_kind(spec, state.round)  # a finished job's state reads as its final round


def finished(spec: JobSpec, state: GlobalState) -> bool:
    return state.round > final_round(spec)


def next_search(spec: JobSpec, round_number: int) -> int:
    """The search round after ``round_number``; past the final round when there is none (after a dropped last
    search there is nothing new left to score)."""
    later = (number for number in range(round_number + 1, final_round(spec)) if round_kind(spec, number) == "search")
    return next(later, final_round(spec) + 1)


def candidates(spec: JobSpec, state: GlobalState) -> int:
    """How many losses a scoring round's report holds."""
    return {"start": len(spec.prompt.starts), "rank": len(state.candidates)}.get(kind(spec, state), 1)


def best_prompt(state: GlobalState) -> Best:
    """The prompt a job returns: the best so far, or the round's prompt before any was scored."""
    return state.best or Best(state.mean_round, state.mean, None)


def validate(spec: JobSpec, state: GlobalState, report: Update | Scores) -> None:
    """Raise InvalidUpdate if the report does not fit the open round (its kind, its shape, its values)."""
    if report.round != state.round:
        raise InvalidUpdate(
            f"report from {report.party!r} is for round {report.round}, the open round is {state.round}"
        )
    expected = Update if kind(spec, state) == "search" else Scores
    if not isinstance(report, expected):
        wanted = "search" if expected is Update else "scores"
        raise InvalidUpdate(f"round {state.round} is a {kind(spec, state)} round: send a {wanted!r} report")
    if isinstance(report, Update):
        aggregate.validate_update(report, spec.prompt.dim, spec.search.iterations)
    else:
        aggregate.validate_scores(report, candidates(spec, state))


def close(spec: JobSpec, state: GlobalState, reports: list[Update | Scores]) -> tuple[GlobalState, dict]:
    """The next state and a record of the round (for the history), from the open round's reports."""
    aggregate.distinct_parties(reports)
    for report in reports:
        validate(spec, state, report)
    reports = sorted(reports, key=lambda report: report.party)
    counts = [report.n_examples for report in reports]
    record = {
        "round": state.round,
        "kind": kind(spec, state),
        "parties": [report.party for report in reports],
        "n_examples": int(sum(counts)),
    }
    if privacy.enabled(spec):
        record["epsilon"] = privacy.epsilon_after_round(spec, state.round)
    if record["kind"] == "start":
        losses = {
            start: pooled_loss(spec, [report.losses[i] for report in reports], counts)
            for i, start in enumerate(spec.prompt.starts)
        }
        chosen = min(spec.prompt.starts, key=lambda start: losses[start])  # ties: the first listed
        best = Best(0, state.mean, losses[chosen])
        record |= {"start_losses": losses, "start": chosen, "loss": losses[chosen]}
        return replace(state, round=1, start=chosen, best=best), record | {"best_round": 0}
    if record["kind"] == "rank":
        return ranked(spec, state, reports, counts, record)
    loss = pooled_loss(
        spec, [report.losses[0] if isinstance(report, Scores) else report.loss for report in reports], counts
    )
    best, worse = state.best, False
    if best is not None and state.mean_round == best.round:  # the best re-scored: keep its latest measurement
        best = replace(best, loss=loss)
    elif best is None or loss < best.loss:
        best = Best(state.mean_round, state.mean, loss)
    else:
        worse = True
    record |= {"loss": loss, "scored_round": state.mean_round, "best_round": best.round, "backtracked": False}
    if record["kind"] == "final":
        return replace(state, round=state.round + 1, best=best), record
    if worse:  # restart from the best, skipping this round's updates (and their rank round)
        sigma = max(state.sigma * spec.search.backtrack, spec.search.step_floor)
        following = next_search(spec, state.round)
        record |= {"backtracked": True, "sigma": sigma}
        return replace(state, round=following, mean=best.mean, sigma=sigma, mean_round=best.round, best=best), record
    record["fitness"] = aggregate.pooled([report.fitness for report in reports], counts)
    if spec.federation.robust == "cross":  # the rank round that follows ranks the means
        means = tuple(report.mean for report in reports)
        record |= {"candidates": len(means), "sigma": state.sigma}
        return replace(state, round=state.round + 1, best=best, pending=tuple(reports), candidates=means), record
    mean, sigma = new_mean(spec, state, reports)
    new = moved(spec, state, best, mean, sigma)
    return new, record | {"sigma": new.sigma, "mean_norm": float(np.linalg.norm(mean))}


def moved(spec: JobSpec, state: GlobalState, best: Best | None, mean: np.ndarray, sigma: float) -> GlobalState:
    """The state after round ``state.round`` made the new global prompt ``mean`` (its step floored)."""
    sigma = max(sigma, spec.search.step_floor)
    mean = on_wire(mean, spec.wire)
    return replace(
        state,
        round=state.round + 1,
        mean=mean,
        sigma=sigma,
        mean_round=state.round,
        best=best,
        pending=(),
        candidates=(),
    )


def ranked(
    spec: JobSpec, state: GlobalState, reports: list[Scores], counts: list[int], record: dict
) -> tuple[GlobalState, dict]:
    """Close a rank round: the ``trim`` share of the pending means with the worst trimmed pooled loss (as the
    parties measured them, not as their senders claimed) is dropped, and the rest make the new mean by the job's
    usual rule."""
    losses = [pooled_loss(spec, [report.losses[i] for report in reports], counts) for i in range(len(state.pending))]
    kept = aggregate.best_measured(list(state.pending), losses, spec.federation.trim)
    mean, sigma = new_mean(spec, state, kept)
    new = moved(spec, state, state.best, mean, sigma)
    record |= {
        "cross_losses": {update.party: loss for update, loss in zip(state.pending, losses, strict=True)},
        "dropped": sorted({update.party for update in state.pending} - {update.party for update in kept}),
        "best_round": state.best.round,
        "sigma": new.sigma,
        "mean_norm": float(np.linalg.norm(mean)),
    }
    return new, record


def pooled_loss(spec: JobSpec, losses: list[float], counts: list[int]) -> float:
    """The parties' pooled loss of a prompt: example-weighted, trimmed under a robust rule."""
    if spec.federation.robust == "none":
        return aggregate.pooled(losses, counts)
    return aggregate.trimmed_pooled(losses, counts, spec.federation.trim)


def new_mean(spec: JobSpec, state: GlobalState, updates: list[Update]) -> tuple[np.ndarray, float]:
    """The next global mean and step from a search round's updates, by the job's aggregator and robust rule."""
    federation = spec.federation
    if federation.robust == "clip":
        updates = aggregate.clipped(updates, state.mean)
    if federation.aggregator == "fedavg":
        mean, sigma = aggregate.fedavg(updates)
    else:
        mean, sigma = aggregate.fedbpt(
            state.sigma, updates, federation.ranking, spec.search.step_rule, spec.search.population
        )
    if federation.robust == "trimmed":
        mean = aggregate.trimmed_mean(np.stack([update.mean for update in updates]), federation.trim)
    return mean, sigma


def round_message(spec: JobSpec, state: GlobalState) -> dict:
    """What a party needs of the open round (the server adds the job, its status, the deadline); a rank round
    adds the means to score, without their senders' names."""
    message = {
        "round": state.round,
        "kind": kind(spec, state),
        "mean": encode_vector(state.mean, spec.wire),
        "sigma": state.sigma,
        "start": state.start,
        "mean_round": state.mean_round,
    }
    if state.candidates:
        message["candidates"] = [encode_vector(mean, spec.wire) for mean in state.candidates]
    return message


def party_state(spec: JobSpec, message: dict) -> GlobalState:
    """The open round as a party sees it, from ``round_message``'s fields."""
    mean = decode_vector(message["mean"], spec.wire)
    candidates = tuple(decode_vector(vector, spec.wire) for vector in message.get("candidates", []))
    return GlobalState(
        message["round"], mean, message["sigma"], message["start"], message["mean_round"], candidates=candidates
    )


def report_body(spec: JobSpec, report: Update | Scores) -> dict:
    """A report as a party sends it: tagged with its kind, without the party's name (the server knows it)."""
    if isinstance(report, Update):
        body = {"kind": "search", **report.to_dict(spec.wire)}
    else:
        body = {"kind": "scores", **report.to_dict()}
    body.pop("party")
    return body


def report_from_body(spec: JobSpec, party: str, body: dict) -> Update | Scores:
    """The report a party sent (``report_body``); an InvalidUpdate if it is malformed."""
    fields = {key: value for key, value in body.items() if key != "kind"} | {"party": party}
    if body.get("kind") == "search":
        return Update.from_dict(fields, spec.wire)
    if body.get("kind") == "scores":
        try:
            return Scores.from_dict(fields)
        except (TypeError, ValueError) as error:
            raise InvalidUpdate(f"malformed scores: {error}") from None
    raise InvalidUpdate("a report's kind must be 'search' or 'scores'")

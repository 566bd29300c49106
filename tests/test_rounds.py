"""The round state machine on synthetic reports: no model, only the policy (start, best-so-far, backtracking)."""

import json

import numpy as np
import pytest

from fedbpt import aggregate, objective, rounds
from fedbpt.protocol import Best, GlobalState, InvalidUpdate, Scores, Update, on_wire
from fedbpt.spec import from_dict, replace, round_kinds

DIM = 4
SPEC = from_dict(
    {
        "prompt": {"dim": DIM, "n_tokens": 2, "starts": list(objective.STARTS)},
        "federation": {"parties": 3, "rounds": 2},
        "search": {"population": 4, "iterations": 2, "step": 0.5, "step_floor": 0.1, "backtrack": 0.5},
    }
)
STARTS = SPEC.prompt.starts


def scores(party: str, round_number: int, losses, n_examples: int = 10) -> Scores:
    return Scores(party, round_number, tuple(float(loss) for loss in losses), n_examples)


def update(party: str, round_number: int, loss: float, mean, fitness: float = 0.5, n_examples: int = 10) -> Update:
    return Update(party, round_number, loss, np.asarray(mean, dtype=float), (0.5, 0.4), 0.4, fitness, n_examples)


def search_state(round_number: int = 2, best_loss: float = 0.6, mean_round: int = 1, sigma: float = 0.5):
    """A search round whose prompt (after round ``mean_round``) is not the best (the start, after round 0)."""
    mean = on_wire(np.array([0.5, -0.25, 0.125, 1.0]), SPEC.wire)
    best = Best(0, np.zeros(DIM), best_loss)
    return GlobalState(round_number, mean, sigma, "instruction", mean_round, best)


def updates(round_number: int, loss: float) -> list[Update]:
    """Three parties' updates that all report ``loss`` for the round's prompt."""
    rng = np.random.default_rng(round_number)
    return [
        update(f"p{i}", round_number, loss, on_wire(rng.normal(size=DIM), SPEC.wire), fitness=0.3 + 0.1 * i)
        for i in range(3)
    ]


def test_several_starts_open_a_start_round():
    state = rounds.initial(SPEC)
    assert (state.round, state.start, state.best) == (0, "", None)
    assert rounds.kind(SPEC, state) == "start" and rounds.candidates(SPEC, state) == len(STARTS)
    assert state.sigma == SPEC.search.step and np.array_equal(state.mean, np.zeros(DIM))
    assert not rounds.finished(SPEC, state)


def test_with_one_start_there_is_no_start_round():
    spec = replace(SPEC, prompt={"starts": ["instruction"]})
    state = rounds.initial(spec)
    assert (state.round, state.start, state.best) == (1, "instruction", None)
    assert rounds.kind(spec, state) == "search" and rounds.candidates(spec, state) == 1


def test_the_start_round_picks_the_example_weighted_best():
    # The small party's loss of 0 for "instruction" would win an unweighted mean (0.4 < 0.5), not a pooled one.
    reports = [
        scores("big-a", 0, [0.7, 0.5, 0.6, 0.9], n_examples=100),
        scores("big-b", 0, [0.7, 0.5, 0.6, 0.9], n_examples=100),
        scores("small", 0, [0.9, 0.9, 0.0, 0.9], n_examples=2),
    ]
    state, record = rounds.close(SPEC, rounds.initial(SPEC), reports)
    assert record["start"] == state.start == "preamble+instruction"
    assert record["start_losses"]["instruction"] == pytest.approx(120 / 202)
    assert record["loss"] == record["start_losses"]["preamble+instruction"] == pytest.approx((100 + 1.8) / 202)
    assert (state.round, state.mean_round, state.sigma) == (1, 0, SPEC.search.step)
    assert state.best.round == 0 and state.best.loss == record["loss"] and not state.best.mean.any()
    assert record["kind"] == "start" and record["best_round"] == 0 and record["n_examples"] == 202


def test_a_tie_between_starts_goes_to_the_first_listed():
    state, _ = rounds.close(SPEC, rounds.initial(SPEC), [scores("a", 0, [0.5, 0.4, 0.4, 0.4])])
    assert state.start == "preamble+instruction"


def test_the_first_search_round_rescores_the_start_without_comparing_it_with_itself():
    state, _ = rounds.close(SPEC, rounds.initial(SPEC), [scores("a", 0, [0.6, 0.6, 0.6, 0.6])])
    reports = updates(1, loss=0.9)  # worse than the start's 0.6: the same prompt, so no backtracking
    after, record = rounds.close(SPEC, state, reports)
    assert not record["backtracked"] and record["scored_round"] == 0 and record["best_round"] == 0
    assert after.best.round == 0 and after.best.loss == pytest.approx(0.9)  # its latest measurement is kept
    expected, sigma = aggregate.fedbpt(state.sigma, reports, "examples", "code", SPEC.search.population)
    np.testing.assert_array_equal(after.mean, on_wire(expected, SPEC.wire))
    assert after.sigma == max(sigma, SPEC.search.step_floor)
    assert (after.round, after.mean_round, after.start) == (2, 1, state.start)


def test_a_search_round_aggregates_the_means_and_keeps_a_better_prompt_as_best():
    state = search_state(best_loss=0.6)
    after, record = rounds.close(SPEC, state, updates(2, loss=0.5))
    assert record["loss"] == pytest.approx(0.5) and not record["backtracked"]
    assert after.best.round == 1 and after.best.loss == pytest.approx(0.5)
    np.testing.assert_array_equal(after.best.mean, state.mean)
    assert (after.round, after.mean_round) == (3, 2)
    assert not np.array_equal(after.mean, state.mean)
    assert record["mean_norm"] == pytest.approx(np.linalg.norm(after.mean), rel=1e-3)


def test_the_pooled_loss_weights_each_party_by_its_examples():
    state = search_state(best_loss=0.6)
    reports = [update("a", 2, 0.2, np.zeros(DIM), n_examples=30), update("b", 2, 1.0, np.zeros(DIM), n_examples=10)]
    after, record = rounds.close(SPEC, state, reports)
    assert record["loss"] == pytest.approx(0.4) and after.best.round == 1  # 0.4 < 0.6; the plain mean 0.6 is not


def test_a_higher_pooled_loss_restarts_from_the_best_with_a_smaller_step():
    spec = replace(SPEC, federation={"rounds": 3})
    state = search_state(round_number=2, best_loss=0.6, sigma=0.5)
    after, record = rounds.close(spec, state, updates(2, loss=0.7))
    assert record["backtracked"] and record["best_round"] == 0
    assert after.best == state.best
    assert after.sigma == record["sigma"] == pytest.approx(0.5 * spec.search.backtrack)
    np.testing.assert_array_equal(after.mean, state.best.mean)
    assert (after.round, after.mean_round) == (3, 0)
    assert rounds.kind(spec, after) == "search"


def test_a_higher_pooled_loss_in_the_last_search_round_ends_the_job_on_the_best():
    state = search_state(round_number=SPEC.federation.rounds, best_loss=0.6)
    after, record = rounds.close(SPEC, state, updates(2, loss=0.7))
    assert record["backtracked"] and rounds.finished(SPEC, after)  # the best needs no final scoring
    assert rounds.best_prompt(after) == state.best


def test_backtracking_never_takes_the_step_below_the_floor():
    after, record = rounds.close(SPEC, search_state(sigma=0.12), updates(2, loss=0.7))
    assert record["backtracked"] and after.sigma == SPEC.search.step_floor


def test_after_backtracking_the_rescored_best_is_not_compared_with_itself():
    state = GlobalState(2, np.zeros(DIM), 0.25, "instruction", 0, Best(0, np.zeros(DIM), 0.6))
    reports = updates(2, loss=0.8)  # the best, scored again (by other parties, or with other data): not "worse"
    after, record = rounds.close(SPEC, state, reports)
    assert not record["backtracked"] and after.best.round == 0 and after.best.loss == pytest.approx(0.8)
    assert (after.round, after.mean_round) == (3, 2)
    expected, _ = aggregate.fedbpt(state.sigma, reports, "examples", "code", SPEC.search.population)
    np.testing.assert_array_equal(after.mean, on_wire(expected, SPEC.wire))


def test_the_fedavg_aggregator_averages_the_means():
    spec = replace(SPEC, federation={"aggregator": "fedavg"})
    reports = updates(2, loss=0.5)
    after, _ = rounds.close(spec, search_state(), reports)
    expected, sigma = aggregate.fedavg(reports)
    np.testing.assert_array_equal(after.mean, on_wire(expected, spec.wire))
    assert after.sigma == pytest.approx(max(sigma, spec.search.step_floor))


def test_the_step_never_falls_below_the_floor_after_aggregating():
    spec = replace(SPEC, search={"step_floor": 0.48})
    after, _ = rounds.close(spec, search_state(), updates(2, loss=0.5))  # the rule gives sqrt(3 * 0.41 / 6) = 0.45
    assert after.sigma == 0.48


def final_state(best_loss: float = 0.6) -> GlobalState:
    state = search_state(round_number=SPEC.federation.rounds + 1, best_loss=best_loss, mean_round=2)
    assert rounds.kind(SPEC, state) == "final" and rounds.candidates(SPEC, state) == 1
    return state


def test_the_final_round_makes_a_better_last_prompt_the_best_and_finishes():
    state = final_state(best_loss=0.6)
    after, record = rounds.close(SPEC, state, [scores("a", 3, [0.5]), scores("b", 3, [0.3])])
    assert record["kind"] == "final" and record["loss"] == pytest.approx(0.4) and record["scored_round"] == 2
    assert after.best.round == 2 and after.best.loss == pytest.approx(0.4)
    np.testing.assert_array_equal(rounds.best_prompt(after).mean, state.mean)
    assert rounds.finished(SPEC, after)


def test_the_final_round_keeps_a_better_best_and_finishes_without_backtracking():
    state = final_state(best_loss=0.3)
    after, record = rounds.close(SPEC, state, [scores("a", 3, [0.5])])
    assert after.best == state.best and not record["backtracked"] and record["best_round"] == 0
    assert rounds.finished(SPEC, after)


def play(spec, start_losses, search_losses, final_loss) -> tuple[list[str], GlobalState]:
    """A job with one party; each search round's prompt scores the next of ``search_losses`` (the start is
    scored again in round 1 at its own loss); the kinds of the rounds played and the last state."""
    state, kinds, losses = rounds.initial(spec), [], iter(search_losses)
    while not rounds.finished(spec, state):
        kind = rounds.kind(spec, state)
        kinds.append(kind)
        if kind == "start":
            reports = [scores("a", 0, start_losses)]
        elif kind == "search":
            loss = min(start_losses) if state.mean_round == 0 else next(losses)
            reports = [update("a", state.round, loss, np.full(DIM, 0.1 * state.round))]
        else:
            reports = [scores("a", state.round, [final_loss])]
        state, _ = rounds.close(spec, state, reports)
    return kinds, state


def test_a_job_goes_start_search_search_final_and_returns_its_best_prompt():
    kinds, state = play(SPEC, [0.7, 0.6, 0.65, 0.9], search_losses=[0.5], final_loss=0.55)
    assert kinds == ["start", "search", "search", "final"]
    best = rounds.best_prompt(state)
    assert best.round == 1 and best.loss == pytest.approx(0.5)


def test_a_job_whose_searched_prompts_are_all_worse_returns_its_start():
    kinds, state = play(SPEC, [0.7, 0.6, 0.65, 0.9], search_losses=[0.8], final_loss=0.9)
    assert kinds == ["start", "search", "search"]  # round 2 backtracked: nothing new is left to score
    best = rounds.best_prompt(state)
    assert best.round == 0 and best.loss == pytest.approx(0.6) and not best.mean.any()


def test_before_any_scoring_the_best_prompt_is_the_rounds_prompt():
    spec = replace(SPEC, prompt={"starts": ["preamble"]})
    best = rounds.best_prompt(rounds.initial(spec))
    assert best.round == 0 and best.loss is None and not best.mean.any()


BAD_REPORTS = [
    ("start", scores("a", 1, [0.5] * 4), "is for round 1, the open round is 0"),
    ("start", update("a", 0, 0.5, np.zeros(DIM)), "is a start round: send"),
    ("start", scores("a", 0, [0.5] * 3), "losses has 3 entries; this round scores 4"),
    ("start", scores("a", 0, [0.5, float("nan"), 0.5, 0.5]), "every loss must be a finite number"),
    ("start", scores("a", 0, [0.5, -0.1, 0.5, 0.5]), "every loss must be a finite number"),
    ("start", scores("a", 0, [0.5] * 4, n_examples=0), "n_examples must be a positive integer"),
    ("search", scores("a", 2, [0.5]), "is a search round: send"),
    ("search", update("a", 1, 0.5, np.zeros(DIM)), "is for round 1, the open round is 2"),
    ("search", update("a", 2, float("nan"), np.zeros(DIM)), "loss must be a finite number"),
    ("search", update("a", 2, -1.0, np.zeros(DIM)), "loss must be a finite number"),
    ("search", update("a", 2, 0.5, np.zeros(DIM + 1)), r"mean has shape \(5,\)"),
    ("search", update("a", 2, 0.5, [0.0, np.nan, 0.0, 0.0]), "NaN or infinite"),
    ("search", update("a", 2, 0.5, np.full(DIM, 1e5)), "exceeds the bound"),
    ("search", update("a", 2, 0.5, np.zeros(DIM), fitness=float("inf")), "fitness must be a finite number"),
    ("final", update("a", 3, 0.5, np.zeros(DIM)), "is a final round: send"),
    ("final", scores("a", 3, [0.5, 0.5]), "losses has 2 entries; this round scores 1"),
]


@pytest.mark.parametrize("kind, report, reason", BAD_REPORTS)
def test_reports_that_do_not_fit_the_open_round_are_refused(kind, report, reason):
    state = {"start": rounds.initial(SPEC), "search": search_state(), "final": final_state()}[kind]
    with pytest.raises(InvalidUpdate, match=reason):
        rounds.validate(SPEC, state, report)
    with pytest.raises(InvalidUpdate, match=reason):
        rounds.close(SPEC, state, [report])


def test_two_reports_from_one_party_or_none_are_refused():
    with pytest.raises(InvalidUpdate, match="same party"):
        rounds.close(SPEC, search_state(), [update("a", 2, 0.5, np.zeros(DIM)), update("a", 2, 0.4, np.ones(DIM))])
    with pytest.raises(InvalidUpdate, match="no reports"):
        rounds.close(SPEC, search_state(), [])


@pytest.mark.parametrize("ranking", ["examples", "fitness", "all"])
def test_the_order_of_search_reports_does_not_matter(ranking):
    spec = replace(SPEC, federation={"ranking": ranking})
    reports = updates(2, loss=0.5)
    first, first_record = rounds.close(spec, search_state(), reports)
    second, second_record = rounds.close(spec, search_state(), reports[::-1])
    assert first.to_dict() == second.to_dict() and first_record == second_record


def test_the_order_of_start_reports_does_not_matter():
    reports = [scores(f"p{i}", 0, np.random.default_rng(i).random(4), n_examples=i + 1) for i in range(4)]
    first = rounds.close(SPEC, rounds.initial(SPEC), reports)
    second = rounds.close(SPEC, rounds.initial(SPEC), reports[::-1])
    assert first[0].to_dict() == second[0].to_dict() and first[1] == second[1]


def test_the_global_state_round_trips_through_json():
    state = search_state()
    again = GlobalState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert (again.round, again.sigma, again.start, again.mean_round) == (2, 0.5, "instruction", 1)
    np.testing.assert_array_equal(again.mean, state.mean)
    assert (again.best.round, again.best.loss) == (0, 0.6) and not again.best.mean.any()
    assert GlobalState.from_dict(rounds.initial(SPEC).to_dict()).best is None


@pytest.mark.parametrize("wire", ["float16", "float32"])
def test_the_round_message_gives_the_party_the_open_round(wire):
    spec = replace(SPEC, wire=wire)
    state = replace_mean(search_state(), on_wire(np.array([0.1, -2.0, 1 / 3, 7.5]), wire))
    message = json.loads(json.dumps(rounds.round_message(spec, state)))
    assert message["kind"] == "search"
    seen = rounds.party_state(spec, message)
    assert (seen.round, seen.sigma, seen.start, seen.mean_round) == (2, 0.5, "instruction", 1)
    np.testing.assert_array_equal(seen.mean, state.mean)


def replace_mean(state: GlobalState, mean: np.ndarray) -> GlobalState:
    return GlobalState(state.round, mean, state.sigma, state.start, state.mean_round, state.best)


@pytest.mark.parametrize("wire", ["float16", "float32"])
def test_a_search_report_round_trips_through_its_body(wire):
    spec = replace(SPEC, wire=wire)
    sent = update("p1", 2, 0.25, on_wire(np.array([0.1, -2.0, 1 / 3, 7.5]), wire), fitness=0.125, n_examples=7)
    body = json.loads(json.dumps(rounds.report_body(spec, sent)))
    assert body["kind"] == "search" and "party" not in body
    received = rounds.report_from_body(spec, "p1", body)
    assert isinstance(received, Update)
    np.testing.assert_array_equal(received.mean, sent.mean)
    for name in ("party", "round", "loss", "sigmas", "sigma", "fitness", "n_examples"):
        assert getattr(received, name) == getattr(sent, name)


def test_a_float16_body_is_about_half_the_float32_body():
    mean = on_wire(np.random.default_rng(0).normal(size=500), "float16")
    sent = update("p", 1, 0.5, mean)
    sizes = {
        wire: len(json.dumps(rounds.report_body(replace(SPEC, wire=wire), sent))) for wire in ("float16", "float32")
    }
    assert sizes["float16"] < 0.6 * sizes["float32"]


def test_a_scores_report_round_trips_through_its_body():
    sent = scores("p1", 0, [0.5, 0.25, 0.125, 1.0], n_examples=3)
    body = json.loads(json.dumps(rounds.report_body(SPEC, sent)))
    assert body["kind"] == "scores" and "party" not in body
    assert rounds.report_from_body(SPEC, "p1", body) == sent


@pytest.mark.parametrize(
    "body, reason",
    [
        ({"kind": "gossip", "round": 0}, "kind must be 'search' or 'scores'"),
        ({"round": 0, "losses": [0.5]}, "kind must be 'search' or 'scores'"),
        ({"kind": "scores", "round": 0, "losses": ["x"], "n_examples": 1}, "malformed scores"),
        ({"kind": "scores", "round": 0, "losses": [0.5], "n_examples": 1, "extra": 1}, "malformed scores"),
        ({"kind": "search", "round": 0}, "needs the fields"),
        ({"kind": "search", **rounds.report_body(SPEC, update("p", 1, 0.5, np.zeros(DIM))), "mean": "!"}, "malformed"),
    ],
)
def test_malformed_report_bodies_are_invalid_updates(body, reason):
    with pytest.raises(InvalidUpdate, match=reason):
        rounds.report_from_body(SPEC, "p", body)


CROSS = replace(SPEC, federation={"robust": "cross", "parties": 5})


def test_under_cross_every_search_round_is_followed_by_a_rank_round():
    assert round_kinds(CROSS) == ["search", "rank", "search", "rank", "final"]
    assert round_kinds(SPEC) == ["search", "search", "final"]
    state = replace_round(rounds.initial(CROSS), 5, "instruction")
    assert rounds.kind(CROSS, state) == "final" and not rounds.finished(CROSS, state)
    assert rounds.finished(CROSS, replace_round(state, 6, "instruction"))


def replace_round(state: GlobalState, round_number: int, start: str) -> GlobalState:
    return GlobalState(round_number, state.mean, state.sigma, start, state.mean_round, state.best)


def honest_and_lying_updates() -> list[Update]:
    """Four honest parties near the global mean and a liar claiming the best fitness for a far-off mean."""
    means = [on_wire(np.full(DIM, 0.1 * (i + 1)), SPEC.wire) for i in range(4)]
    honest = [update(f"p{i}", 1, 0.5, mean, fitness=0.4 + 0.01 * i) for i, mean in enumerate(means)]
    return honest + [update("p4", 1, 0.001, np.full(DIM, 50.0), fitness=0.001)]


def test_a_cross_search_round_leaves_its_means_to_the_rank_round_which_drops_those_the_others_measured_worst():
    state = GlobalState(1, np.zeros(DIM), 0.5, "instruction", 0, Best(0, np.zeros(DIM), 0.6))
    ranking, record = rounds.close(CROSS, state, honest_and_lying_updates())
    assert (ranking.round, rounds.kind(CROSS, ranking), record["candidates"]) == (2, "rank", 5)
    np.testing.assert_array_equal(ranking.mean, state.mean)  # no new prompt before the ranking
    assert rounds.candidates(CROSS, ranking) == 5 and [u.party for u in ranking.pending] == [f"p{i}" for i in range(5)]
    # The honest parties score the liar's mean badly; the liar scores everything near zero (trimmed away).
    honest_losses = [0.45, 0.44, 0.43, 0.42, 2.0]
    reports = [scores(f"p{i}", 2, honest_losses) for i in range(4)] + [scores("p4", 2, [0.001] * 5)]
    after, ranked = rounds.close(CROSS, ranking, reports)
    assert (after.round, after.mean_round, after.pending, after.candidates) == (3, 2, (), ())
    assert ranked["cross_losses"]["p4"] == pytest.approx(2.0) and ranked["cross_losses"]["p3"] == pytest.approx(0.42)
    assert ranked["dropped"] == ["p4"]
    honest_only, _ = rounds.close(CROSS, state, honest_and_lying_updates()[:4])
    expected = rounds.new_mean(CROSS, honest_only, list(honest_only.pending))[0]
    np.testing.assert_array_equal(after.mean, on_wire(expected, CROSS.wire))  # the usual rule on the rest
    plain, _ = rounds.close(replace(CROSS, federation={"robust": "none"}), state, honest_and_lying_updates())
    assert np.all(plain.mean > 10)  # ranked by their claims, the liar leads the round


def test_a_cross_state_round_trips_through_json_and_its_message_carries_the_means_without_their_senders():
    state = GlobalState(1, np.zeros(DIM), 0.5, "instruction", 0, Best(0, np.zeros(DIM), 0.6))
    ranking, _ = rounds.close(CROSS, state, honest_and_lying_updates())
    again = GlobalState.from_dict(json.loads(json.dumps(ranking.to_dict())))
    assert [repr(u) for u in again.pending] == [repr(u) for u in ranking.pending]
    assert all(np.array_equal(a, b) for a, b in zip(again.candidates, ranking.candidates, strict=True))
    message = json.loads(json.dumps(rounds.round_message(CROSS, ranking)))
    assert message["kind"] == "rank" and len(message["candidates"]) == 5 and "p4" not in json.dumps(message)
    seen = rounds.party_state(CROSS, message)
    assert all(np.array_equal(a, b) for a, b in zip(seen.candidates, ranking.candidates, strict=True))
    assert seen.pending == ()


def test_a_rank_round_takes_one_loss_per_mean():
    state = GlobalState(1, np.zeros(DIM), 0.5, "instruction", 0, Best(0, np.zeros(DIM), 0.6))
    ranking, _ = rounds.close(CROSS, state, honest_and_lying_updates())
    with pytest.raises(InvalidUpdate, match="losses has 4 entries; this round scores 5"):
        rounds.validate(CROSS, ranking, scores("p0", 2, [0.5] * 4))
    with pytest.raises(InvalidUpdate, match="is a rank round: send a 'scores' report"):
        rounds.validate(CROSS, ranking, update("p0", 2, 0.5, np.zeros(DIM)))


def test_a_worse_cross_search_round_skips_its_rank_round():
    spec = replace(CROSS, federation={"rounds": 3})
    reports = [replace_party(report, 3) for report in honest_and_lying_updates()]  # a trimmed pooled loss of 0.5
    state = GlobalState(3, np.ones(DIM), 0.5, "instruction", 2, Best(0, np.zeros(DIM), 0.3))
    after, record = rounds.close(spec, state, reports)
    assert record["backtracked"] and (after.round, rounds.kind(spec, after), after.pending) == (5, "search", ())
    last = GlobalState(5, np.ones(DIM), 0.5, "instruction", 4, Best(0, np.zeros(DIM), 0.3))
    after, _ = rounds.close(spec, last, [replace_party(report, 5) for report in reports])
    assert rounds.finished(spec, after)  # the last search dropped: nothing new left to score


def replace_party(report: Update, round_number: int) -> Update:
    return Update(**{**report.__dict__, "round": round_number})

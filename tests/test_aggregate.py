"""Server aggregation: recombination weights per ranking, the step rules, FedAvg, and refusals of bad reports."""

import json
import math

import numpy as np
import pytest

from fedbpt import aggregate
from fedbpt.protocol import InvalidUpdate, Scores, Update, on_wire

DIM = 20


def update(
    party: str, mean, fitness: float = 1.0, n_examples: int = 10, sigmas=(1.0, 0.9), sigma=0.8, loss=0.5, round=1
) -> Update:
    return Update(party, round, loss, np.asarray(mean, dtype=float), tuple(sigmas), sigma, fitness, n_examples)


def basis_updates(fitnesses, examples=None) -> list[Update]:
    """Party i's mean is the i-th unit vector, so the new mean's entry i is party i's weight."""
    examples = examples or [10] * len(fitnesses)
    pairs = enumerate(zip(fitnesses, examples, strict=True))
    return [update(f"p{i}", np.eye(DIM)[i], fitness=fitness, n_examples=n) for i, (fitness, n) in pairs]


def test_log_weights_are_cma_es_positive_weights():
    weights = aggregate.log_weights(3)
    raw = np.log(3.5) - np.log([1, 2, 3])
    np.testing.assert_allclose(weights, raw / raw.sum())
    assert weights.sum() == pytest.approx(1) and np.all(np.diff(weights) < 0)
    assert aggregate.log_weights(1).tolist() == [1.0]


def test_fitness_ranking_recombines_the_better_half_with_cma_weights():
    updates = basis_updates([0.9, 0.1, 0.5, 0.3, 0.7])
    chosen, weights = aggregate.recombination(updates, "fitness")
    assert [u.party for u in chosen] == ["p1", "p3"]  # 5 // 2 = 2 best by fitness
    np.testing.assert_allclose(weights, aggregate.log_weights(2))


def test_all_ranking_recombines_every_mean_by_rank():
    updates = basis_updates([0.9, 0.1, 0.5, 0.3, 0.7])
    chosen, weights = aggregate.recombination(updates, "all")
    assert [u.party for u in chosen] == ["p1", "p3", "p2", "p4", "p0"]
    np.testing.assert_allclose(weights, aggregate.log_weights(5))


def test_examples_ranking_weights_rank_times_examples():
    updates = basis_updates([0.9, 0.1, 0.5], examples=[40, 2, 10])
    chosen, weights = aggregate.recombination(updates, "examples")
    assert [u.party for u in chosen] == ["p1", "p2", "p0"]
    expected = aggregate.log_weights(3) * np.array([2, 10, 40])
    np.testing.assert_allclose(weights, expected / expected.sum())
    assert weights[0] < weights[2]  # a 2-example party leads the ranking but has little say


def test_ranking_ties_are_broken_by_party_name():
    updates = [update(name, np.zeros(DIM), fitness=0.5) for name in ("c", "a", "b")]
    chosen, _ = aggregate.recombination(updates, "all")
    assert [u.party for u in chosen] == ["a", "b", "c"]


def test_an_unknown_ranking_is_refused():
    with pytest.raises(ValueError, match="unknown ranking"):
        aggregate.recombination(basis_updates([0.1, 0.2]), "loss")


@pytest.mark.parametrize("ranking", ["fitness", "all", "examples"])
def test_fedbpt_mean_is_the_weighted_recombination(ranking):
    updates = basis_updates([0.9, 0.1, 0.5, 0.3], examples=[5, 10, 20, 40])
    mean, _ = aggregate.fedbpt(1.0, updates, ranking, "code", 5)
    chosen, weights = aggregate.recombination(updates, ranking)
    expected = np.zeros(DIM)
    for chosen_update, weight in zip(chosen, weights, strict=True):
        expected[int(chosen_update.party[1:])] = weight
    np.testing.assert_allclose(mean, expected)
    assert mean.sum() == pytest.approx(1)


@pytest.mark.parametrize("ranking", ["fitness", "all", "examples"])
def test_identical_means_give_that_mean(ranking):
    mean = np.random.default_rng(0).normal(size=DIM)
    updates = [update(f"p{i}", mean, fitness=0.1 * i, n_examples=i + 1) for i in range(4)]
    np.testing.assert_allclose(aggregate.fedbpt(1.0, updates, ranking, "code", 5)[0], mean)
    np.testing.assert_allclose(aggregate.fedavg(updates)[0], mean)


def test_code_step_rule_uses_every_party_over_mu():
    updates = [update(f"p{i}", np.zeros(DIM), fitness=i, sigmas=(1.0,) * 4) for i in range(4)]
    # sqrt(sum of all 16 squares / (4 parties * mu = 5 // 2))
    assert aggregate.server_sigma(updates, "code", 5, better=2) == pytest.approx(math.sqrt(16 / 8))


def test_paper_step_rule_uses_the_better_parties_over_lambda():
    updates = [update(f"p{i}", np.zeros(DIM), fitness=i, sigmas=(float(i + 1),) * 2) for i in range(4)]
    # 2 * sqrt((2 * 1 + 2 * 4) / (4 parties * lambda = 5)), the first two (best) parties only
    assert aggregate.server_sigma(updates, "paper", 5, better=2) == pytest.approx(2 * math.sqrt(10 / 20))


def test_an_unknown_step_rule_is_refused():
    with pytest.raises(ValueError, match="unknown step rule"):
        aggregate.server_sigma(basis_updates([0.1]), "median", 5, better=1)


@pytest.mark.parametrize("rule", ["code", "paper"])
def test_fedbpt_step_never_grows_between_rounds(rule):
    growing = [update(f"p{i}", np.zeros(DIM), fitness=i, sigmas=(2.0,) * 4) for i in range(4)]
    assert aggregate.fedbpt(0.5, growing, "all", rule, 5)[1] == 0.5


def test_fedbpt_step_follows_the_rule_when_it_shrinks():
    shrinking = [update(f"p{i}", np.zeros(DIM), fitness=i, sigmas=(0.1,) * 4) for i in range(4)]
    assert aggregate.fedbpt(1.0, shrinking, "all", "code", 5)[1] == pytest.approx(0.1 * math.sqrt(2))


def test_the_paper_rule_sums_over_the_recombined_parties():
    updates = [update(f"p{i}", np.zeros(DIM), fitness=i, sigmas=(0.1 * (i + 1),)) for i in range(4)]
    _, sigma = aggregate.fedbpt(10.0, updates, "fitness", "paper", 5)  # fitness: the better 2 of 4 recombined
    assert sigma == pytest.approx(aggregate.server_sigma(updates, "paper", 5, better=2))
    _, sigma_all = aggregate.fedbpt(10.0, updates[::-1], "all", "paper", 5)
    assert sigma_all == pytest.approx(aggregate.server_sigma(updates, "paper", 5, better=4))


def test_fedavg_weights_means_and_steps_by_examples():
    updates = [
        update("a", np.full(DIM, 1.0), n_examples=30, sigma=1.0, fitness=0.9),
        update("b", np.full(DIM, 5.0), n_examples=10, sigma=0.2, fitness=0.1),
    ]
    mean, sigma = aggregate.fedavg(updates)
    np.testing.assert_allclose(mean, 2.0)
    assert sigma == pytest.approx(0.8)


@pytest.mark.parametrize("ranking", ["fitness", "all", "examples"])
def test_fedbpt_does_not_depend_on_arrival_order(ranking):
    rng = np.random.default_rng(1)
    updates = [
        update(f"p{i}", rng.normal(size=DIM), float(rng.random()), int(rng.integers(1, 50)), sigmas=(rng.random(),))
        for i in range(7)
    ]
    for rule in ("code", "paper"):
        first = aggregate.fedbpt(1.0, updates, ranking, rule, 5)
        second = aggregate.fedbpt(1.0, updates[::-1], ranking, rule, 5)
        np.testing.assert_array_equal(first[0], second[0])
        assert first[1] == second[1]


def test_fedavg_does_not_depend_on_arrival_order():
    rng = np.random.default_rng(2)
    updates = [update(f"p{i}", rng.normal(size=DIM), n_examples=i + 1, sigma=rng.random() + 0.1) for i in range(7)]
    first, second = aggregate.fedavg(updates), aggregate.fedavg(updates[3:] + updates[:3])
    np.testing.assert_array_equal(first[0], second[0])
    assert first[1] == second[1]


def test_pooled_is_the_example_weighted_mean():
    assert aggregate.pooled([0.2, 1.0], [30, 10]) == pytest.approx(0.4)


BAD_UPDATES = [
    (dict(mean=np.zeros(DIM - 1)), "shape"),
    (dict(mean=np.full(DIM, np.nan)), "NaN"),
    (dict(mean=np.full(DIM, 1e6)), "norm"),
    (dict(sigmas=()), "sigmas has 0 entries"),
    (dict(sigmas=(1.0,) * 5), "sigmas has 5 entries"),
    (dict(sigmas=(1.0, -1.0)), "positive"),
    (dict(sigma=float("inf")), "finite"),
    (dict(sigma=2e3), "at most"),
    (dict(fitness=float("nan")), "fitness"),
    (dict(fitness="0.5"), "fitness"),
    (dict(fitness=True), "fitness"),
    (dict(loss=float("nan")), "loss must be"),
    (dict(loss=-0.1), "loss must be"),
    (dict(loss=2e6), "loss must be"),
    (dict(loss=True), "loss must be"),
    (dict(n_examples=0), "n_examples"),
    (dict(n_examples=True), "n_examples"),
    (dict(n_examples=2.0), "n_examples"),
]


@pytest.mark.parametrize("changes, reason", BAD_UPDATES)
def test_malformed_updates_are_refused_with_a_reason(changes, reason):
    bad = Update(**{**vars(update("bad", np.zeros(DIM))), **changes})
    with pytest.raises(InvalidUpdate, match=reason):
        aggregate.validate_update(bad, DIM, iterations=4)


def test_a_well_formed_update_passes():
    aggregate.validate_update(update("ok", np.ones(DIM), sigmas=(1.0,) * 4), DIM, iterations=4)


@pytest.mark.parametrize(
    "losses, n_examples, reason",
    [
        ((0.5,), 3, "losses has 1 entries; this round scores 2"),
        ((0.5, float("inf")), 3, "every loss"),
        ((0.5, -1.0), 3, "every loss"),
        ((0.5, 0.5), 0, "n_examples"),
    ],
)
def test_malformed_scores_are_refused_with_a_reason(losses, n_examples, reason):
    with pytest.raises(InvalidUpdate, match=reason):
        aggregate.validate_scores(Scores("p", 0, losses, n_examples), candidates=2)


def test_duplicate_party_and_empty_round_are_refused():
    with pytest.raises(InvalidUpdate, match="same party"):
        aggregate.distinct_parties([update("a", np.zeros(DIM)), update("a", np.ones(DIM))])
    with pytest.raises(InvalidUpdate, match="no reports"):
        aggregate.distinct_parties([])


@pytest.mark.parametrize("wire", ["float16", "float32"])
def test_update_round_trips_through_json(wire):
    mean = on_wire(np.random.default_rng(2).normal(size=DIM), wire)
    original = update("p", mean, fitness=0.25, loss=0.75)
    again = Update.from_dict(json.loads(json.dumps(original.to_dict(wire))), wire)
    np.testing.assert_array_equal(again.mean, mean)
    assert (again.sigmas, again.fitness, again.loss, again.party) == (original.sigmas, 0.25, 0.75, "p")


def test_scores_round_trip_through_json():
    original = Scores("p", 0, (0.5, 0.25), 3, 1.5)
    assert Scores.from_dict(json.loads(json.dumps(original.to_dict()))) == original


GOOD = update("p", np.zeros(DIM)).to_dict()
MALFORMED_WIRE_UPDATES = [
    ({"party": "p"}, "needs the fields"),
    ({**GOOD, "extra": 1}, "needs the fields"),
    ({key: value for key, value in GOOD.items() if key != "loss"}, "needs the fields"),
    ({**GOOD, "mean": "not base64!"}, "malformed mean"),
    ({**GOOD, "sigmas": ["x"]}, "malformed mean or sigmas"),
    ("not a dict", "needs the fields"),
]


@pytest.mark.parametrize("data, reason", MALFORMED_WIRE_UPDATES)
def test_malformed_wire_updates_are_invalid_updates(data, reason):
    with pytest.raises(InvalidUpdate, match=reason):
        Update.from_dict(data)


def test_a_vector_of_a_broken_length_is_a_malformed_mean():
    with pytest.raises(InvalidUpdate, match="malformed mean"):
        Update.from_dict({**GOOD, "mean": "AAAA"})  # 3 bytes: not a whole number of float32 values


# robust rules


def test_a_trimmed_pooled_loss_drops_the_extremes_before_weighting():
    losses, examples = [0.001, 0.5, 0.6, 0.55, 9.0], [10, 10, 30, 10, 10]
    assert aggregate.trimmed_pooled(losses, examples, 0.2) == pytest.approx(
        np.average([0.5, 0.6, 0.55], weights=[10, 30, 10])
    )
    assert aggregate.trimmed_pooled(losses, examples, 0.0) == pytest.approx(aggregate.pooled(losses, examples))
    assert aggregate.trimmed_pooled(losses, examples, 0.1) == pytest.approx(aggregate.pooled(losses, examples))  # 0 cut


def test_clipping_bounds_each_move_to_the_median_move():
    center = np.full(DIM, 0.5)
    moves = [np.eye(DIM)[0] * size for size in (1.0, 2.0, 3.0, 100.0)]
    clipped = aggregate.clipped([update(f"p{i}", center + move) for i, move in enumerate(moves)], center)
    norms = [np.linalg.norm(u.mean - center) for u in clipped]
    np.testing.assert_allclose(norms, [1.0, 2.0, 2.5, 2.5])  # the median of 1, 2, 3, 100 is 2.5
    np.testing.assert_allclose(clipped[3].mean - center, np.eye(DIM)[0] * 2.5)  # the direction is kept
    assert [u.party for u in clipped] == ["p0", "p1", "p2", "p3"] and clipped[0].fitness == 1.0


def test_a_trimmed_mean_ignores_one_wild_mean_per_coordinate():
    vectors = np.array([[1.0, -1.0], [2.0, -2.0], [3.0, -3.0], [1e4, 1e4], [2.5, -2.5]])
    np.testing.assert_allclose(aggregate.trimmed_mean(vectors, 0.2), [2.5, -5.5 / 3])  # one dropped at each end
    np.testing.assert_allclose(aggregate.trimmed_mean(vectors, 0.0), vectors.mean(axis=0))


def test_best_measured_drops_the_trim_share_with_the_worst_measured_losses():
    reports = [Update(f"p{i}", 1, 0.5, np.full(2, float(i)), (0.5,), 0.5, 0.5, 4) for i in range(5)]
    kept = aggregate.best_measured(reports, [0.3, 0.9, 0.2, 0.5, 0.9], trim=0.4)
    assert [update.party for update in kept] == ["p0", "p2", "p3"]  # p1 and p4 tie for the worst: both go
    assert aggregate.best_measured(reports, [0.1] * 5, trim=0.1) == reports  # 0.1 x 5 parties: none dropped

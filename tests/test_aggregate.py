import json

import numpy as np
import pytest

from fedbpt import aggregate
from fedbpt.aggregate import GlobalState, InvalidUpdate, Update

DIM = 20


def update(party: str, mean, fitness: float = 1.0, n_examples: int = 10, sigmas=(1.0, 0.9), sigma=0.8, round=0):
    return Update(party, round, np.asarray(mean, dtype=float), tuple(sigmas), sigma, fitness, n_examples)


def state():
    return GlobalState.initial(DIM, 1.0)


@pytest.mark.parametrize("rule", ["fedbpt", "fedavg"])
def test_identical_updates_give_that_mean(rule):
    mean = np.random.default_rng(0).normal(size=DIM)
    updates = [update(f"p{i}", mean, fitness=0.5) for i in range(4)]
    new = getattr(aggregate, rule)(state(), updates)
    np.testing.assert_allclose(new.mean, mean)
    assert new.round == 1


def test_fedbpt_ranks_by_fitness_and_ignores_the_worse_half():
    means = np.eye(DIM)[:4] * 10
    updates = [update(f"p{i}", means[i], fitness=f) for i, f in enumerate([0.9, 0.1, 0.5, 0.3])]
    new = aggregate.fedbpt(state(), updates)
    # population 4: the best two (p1, then p3) are recombined with pycma's weights, the best heaviest.
    assert new.mean[1] > new.mean[3] > 0
    assert new.mean[0] == 0 and new.mean[2] == 0
    assert new.mean.sum() == pytest.approx(10)


def test_fedbpt_does_not_depend_on_arrival_order():
    rng = np.random.default_rng(1)
    updates = [update(f"p{i}", rng.normal(size=DIM), fitness=float(rng.random())) for i in range(7)]
    first = aggregate.fedbpt(state(), updates)
    second = aggregate.fedbpt(state(), updates[::-1])
    np.testing.assert_array_equal(first.mean, second.mean)
    assert first.sigma == second.sigma


def test_fedavg_weights_by_example_count():
    updates = [
        update("a", np.full(DIM, 1.0), n_examples=30, sigma=1.0),
        update("b", np.full(DIM, 5.0), n_examples=10, sigma=0.2),
    ]
    new = aggregate.fedavg(state(), updates)
    np.testing.assert_allclose(new.mean, 2.0)
    assert new.sigma == pytest.approx(0.8)


def test_sigma_rules():
    updates = [update(f"p{i}", np.zeros(DIM), fitness=i, sigmas=(1.0, 1.0, 1.0, 1.0)) for i in range(4)]
    ranked = sorted(updates, key=lambda u: u.fitness)
    # code: sqrt(sum of all 16 squares / (4 parties * mu=2 of population 5))
    assert aggregate.server_sigma(ranked, "code", 5) == pytest.approx(np.sqrt(16 / 8))
    # paper: 2 * sqrt(better half's 8 squares / (4 parties * lambda=5))
    assert aggregate.server_sigma(ranked, "paper", 5) == pytest.approx(2 * np.sqrt(8 / 20))
    with pytest.raises(ValueError, match="unknown sigma rule"):
        aggregate.server_sigma(ranked, "other", 5)
    assert aggregate.fedbpt(state(), updates).sigma == 1.0  # never grows between rounds
    shrinking = [update(f"p{i}", np.zeros(DIM), fitness=i, sigmas=(0.1,) * 4) for i in range(4)]
    assert aggregate.fedbpt(state(), shrinking).sigma == pytest.approx(0.1 * np.sqrt(2))
    assert aggregate.fedbpt(state(), shrinking, sigma_floor=0.5).sigma == 0.5


BAD_UPDATES = [
    (dict(mean=np.zeros(DIM - 1)), "shape"),
    (dict(mean=np.full(DIM, np.nan)), "NaN"),
    (dict(mean=np.full(DIM, 1e6)), "norm"),
    (dict(sigmas=()), "sigmas is empty"),
    (dict(sigmas=(1.0, -1.0)), "positive"),
    (dict(sigma=float("inf")), "finite"),
    (dict(fitness=float("nan")), "fitness"),
    (dict(n_examples=0), "n_examples"),
    (dict(round=3), "round 3"),
]


@pytest.mark.parametrize("changes, reason", BAD_UPDATES)
@pytest.mark.parametrize("rule", ["fedbpt", "fedavg"])
def test_malformed_updates_are_rejected_with_a_reason(rule, changes, reason):
    good = dict(mean=np.zeros(DIM))
    bad = update("bad", **{**good, **changes})
    with pytest.raises(InvalidUpdate, match=reason):
        getattr(aggregate, rule)(state(), [update("ok", np.zeros(DIM)), bad])


def test_duplicate_party_and_empty_round_are_rejected():
    with pytest.raises(InvalidUpdate, match="same party"):
        aggregate.fedbpt(state(), [update("a", np.zeros(DIM)), update("a", np.ones(DIM))])
    with pytest.raises(InvalidUpdate, match="no updates"):
        aggregate.fedavg(state(), [])


def test_state_and_update_round_trip_through_json():
    mean = np.random.default_rng(2).normal(size=DIM).astype(np.float32).astype(float)
    restored = GlobalState.from_dict(json.loads(json.dumps(GlobalState(3, mean, 0.7).to_dict())))
    np.testing.assert_array_equal(restored.mean, mean)
    assert (restored.round, restored.sigma) == (3, 0.7)
    original = update("p", mean, fitness=0.25)
    again = Update.from_dict(json.loads(json.dumps(original.to_dict())))
    np.testing.assert_array_equal(again.mean, mean)
    assert again.sigmas == original.sigmas and again.fitness == 0.25


MALFORMED_WIRE_UPDATES = [
    ({"party": "p"}, "needs the fields"),
    ({**update("p", np.zeros(DIM)).to_dict(), "extra": 1}, "needs the fields"),
    ({**update("p", np.zeros(DIM)).to_dict(), "mean": "not base64!"}, "malformed mean"),
    ({**update("p", np.zeros(DIM)).to_dict(), "sigmas": ["x"]}, "malformed mean or sigmas"),
]


@pytest.mark.parametrize("data, reason", MALFORMED_WIRE_UPDATES)
def test_malformed_wire_updates_are_invalid_updates(data, reason):
    with pytest.raises(InvalidUpdate, match=reason):
        Update.from_dict(data)


@pytest.mark.parametrize(
    "changes, reason",
    [
        (dict(fitness="0.5"), "fitness"),
        (dict(fitness=True), "fitness"),
        (dict(n_examples=True), "n_examples"),
        (dict(round="0"), "round must be an integer"),
    ],
)
def test_wrong_types_are_rejected(changes, reason):
    bad = Update(**{**vars(update("bad", np.zeros(DIM))), **changes})
    with pytest.raises(InvalidUpdate, match=reason):
        aggregate.validate(state(), bad)

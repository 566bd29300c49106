import json

import numpy as np
import pytest

from fedbpt import aggregate, simulate
from fedbpt.aggregate import GlobalState
from fedbpt.search import SearchConfig, local_search, party_seed
from fedbpt.simulate import SimulationConfig

TARGET = np.linspace(-1.0, 1.0, 30)


def sphere(population: np.ndarray) -> np.ndarray:
    return np.sum((population - TARGET) ** 2, axis=1)


def test_local_search_lowers_a_toy_objective_and_reports_its_work():
    state = GlobalState.initial(30, 0.5)
    config = SearchConfig(population=8, iterations=30)
    update = local_search(state, sphere, config, seed=3, party="p", n_examples=12)
    assert update.fitness < 0.5 * sphere(state.mean[None])[0]
    assert update.fitness == pytest.approx(sphere(update.mean[None])[0])
    assert len(update.sigmas) == 30 and update.evaluations == 30 * 8 + 1
    assert update.n_examples == 12 and update.round == 0 and update.seconds > 0
    aggregate.validate(state, update)


def test_local_search_is_reproducible_per_seed():
    state = GlobalState.initial(30, 0.5)
    config = SearchConfig(population=4, iterations=3)
    first, again, other = (local_search(state, sphere, config, seed, "p", 1) for seed in (5, 5, 6))
    np.testing.assert_array_equal(first.mean, again.mean)
    assert not np.array_equal(first.mean, other.mean)


@pytest.mark.parametrize("rule", ["fedbpt", "fedavg"])
def test_federated_rounds_lower_a_toy_objective(rule):
    state = GlobalState.initial(30, 0.5)
    config = SearchConfig(population=5, iterations=4)
    for round_number in range(8):
        updates = [
            local_search(state, sphere, config, party_seed(1, party, round_number), f"p{party}", 10)
            for party in range(4)
        ]
        state = getattr(aggregate, rule)(state, updates)
    assert sphere(state.mean[None])[0] < 0.5 * sphere(np.zeros((1, 30)))[0]


def test_party_seeds_differ_between_parties_and_rounds():
    seeds = {party_seed(42, party, round_number) for party in range(10) for round_number in range(10)}
    assert len(seeds) == 100 and min(seeds) >= 1


def test_search_config_is_checked():
    with pytest.raises(ValueError, match="population"):
        SearchConfig(population=1)
    with pytest.raises(ValueError, match="loss"):
        SearchConfig(loss="mse")
    with pytest.raises(ValueError, match="perturb_rate"):
        SearchConfig(perturb_rate=1.0)


def small_config(**changes) -> SimulationConfig:
    options = dict(
        parties=3,
        rounds=2,
        examples_per_party=4,
        dim=20,
        n_tokens=3,
        eval_examples=16,
        search=SearchConfig(population=3, iterations=2),
    )
    return SimulationConfig(**{**options, **changes})


def test_simulation_writes_a_complete_results_file(backend, tmp_path):
    out = tmp_path / "run.json"
    results = simulate.simulate(small_config(eval_every=2, rounds=3), backend, out)
    saved = json.loads(out.read_text())
    assert saved["status"] == "finished" and saved == json.loads(json.dumps(results))
    assert [r["round"] for r in saved["rounds"]] == [1, 2, 3]
    assert ["accuracy" in r for r in saved["rounds"]] == [False, True, True]  # every 2 rounds and the last
    assert 0 <= saved["zero_shot_accuracy"] <= 1 and saved["final_accuracy"] == saved["rounds"][-1]["accuracy"]
    assert sum(saved["party_examples"]) == 12 and np.array(saved["party_class_histogram"]).sum() == 12
    assert saved["rounds"][0]["bytes_per_party"]["sent"] > 20 * 4
    assert "final accuracy" in simulate.summary(saved)


def test_interrupted_simulation_keeps_finished_rounds(backend, tmp_path, monkeypatch):
    calls = []
    real_search = simulate.local_search

    def search_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:  # the second round's first party: Ctrl-C
            raise KeyboardInterrupt
        return real_search(*args, **kwargs)

    monkeypatch.setattr(simulate, "local_search", search_then_interrupt)
    out = tmp_path / "run.json"
    simulate.simulate(small_config(rounds=5), backend, out)
    saved = json.loads(out.read_text())
    assert saved["status"] == "interrupted" and len(saved["rounds"]) == 1
    assert "final_accuracy" in saved and "final_state" in saved


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(partition="random"), "partition"),
        (dict(aggregator="mean"), "aggregator"),
        (dict(rounds=0), "rounds"),
        (dict(sigma_rule="median"), "sigma_rule"),
        (dict(placement="middle"), "placement"),
        (dict(n_tokens=0), "n_tokens"),
        (dict(parties_per_round=0), "parties_per_round"),
        (dict(sigma0=0), "sigma0"),
    ],
)
def test_simulation_config_is_checked(changes, message):
    with pytest.raises(ValueError, match=message):
        small_config(**changes)


def test_parties_per_round_as_fraction_or_count():
    assert small_config(parties=10, parties_per_round=0.3).per_round() == 3
    assert small_config(parties=10, parties_per_round=4).per_round() == 4
    assert small_config(parties=10, parties_per_round=50).per_round() == 10

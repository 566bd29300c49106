"""One party's work: the local searches on a toy objective, and ``respond`` on the tiny model in each kind of round."""

import numpy as np
import pytest

from fedbpt import rounds
from fedbpt.data import validation_split
from fedbpt.federation import party_seed
from fedbpt.job import prompted_model
from fedbpt.protocol import Best, GlobalState, Scores, Update, on_wire
from fedbpt.search import cma_search, local_search, respond, zo_search
from fedbpt.spec import SearchSpec, from_dict, replace
from fedbpt.tasks import builtin_task

DIM = 30
TARGET = np.linspace(-1.0, 1.0, DIM)
CMA = SearchSpec(population=8, iterations=30)
ZO = SearchSpec(method="zo-sgd", population=8, iterations=40, learning_rate=0.05)


def sphere(population: np.ndarray) -> np.ndarray:
    return np.sum((population - TARGET) ** 2, axis=1)


START_LOSS = float(sphere(np.zeros((1, DIM)))[0])


def test_cma_search_lowers_a_toy_objective_and_reports_its_steps():
    mean, sigmas, sigma, queries = cma_search(np.zeros(DIM), 0.5, sphere, CMA, seed=3)
    assert sphere(mean[None])[0] < 0.5 * START_LOSS
    assert len(sigmas) == CMA.iterations and sigmas[0] == 0.5 and sigma > 0
    assert queries == CMA.iterations * CMA.population


def test_zo_search_lowers_a_toy_objective_with_at_most_the_population_per_iteration():
    mean, sigmas, sigma, queries = zo_search(np.zeros(DIM), 0.1, sphere, ZO, seed=3)
    assert sphere(mean[None])[0] < 0.1 * START_LOSS
    assert sigmas == (0.1,) * ZO.iterations and sigma == 0.1
    assert queries == ZO.iterations * ZO.population  # 4 antithetic pairs


def test_zo_search_queries_one_pair_with_an_odd_population_of_three():
    counted = []

    def counting(population):
        counted.append(len(population))
        return sphere(population)

    zo_search(np.zeros(DIM), 0.1, counting, SearchSpec(method="zo-sgd", population=3, iterations=2), seed=1)
    assert counted == [2, 2]


@pytest.mark.parametrize("search_function, search", [(cma_search, CMA), (zo_search, ZO)], ids=["cma-es", "zo-sgd"])
def test_the_same_seed_reproduces_the_search(search_function, search):
    first, again, other = (search_function(np.zeros(DIM), 0.3, sphere, search, seed)[0] for seed in (5, 5, 6))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("wire", ["float16", "float32"])
def test_local_search_rounds_the_mean_to_the_wire_and_scores_the_rounded_mean(wire):
    state = GlobalState(3, np.zeros(DIM), 0.5, "preamble")
    update = local_search(state, sphere, CMA, seed=3, party="p", n_examples=12, loss=0.75, wire=wire)
    np.testing.assert_array_equal(update.mean, on_wire(update.mean, wire))
    assert update.fitness == sphere(update.mean[None])[0]
    assert (update.party, update.round, update.loss, update.n_examples) == ("p", 3, 0.75, 12)
    assert update.evaluations == CMA.iterations * CMA.population + 1 and update.seconds > 0


def test_float16_rounding_changes_a_searched_mean():
    state = GlobalState(1, np.zeros(DIM), 0.5, "preamble")
    rounded = local_search(state, sphere, CMA, 3, "p", 1, 0.5, "float16").mean
    exact = cma_search(np.zeros(DIM), 0.5, sphere, CMA, 3)[0]
    assert not np.array_equal(rounded, exact)
    np.testing.assert_allclose(rounded, exact, rtol=1e-3)


def test_party_seeds_differ_between_parties_and_rounds():
    seeds = {party_seed(42, party, round_number) for party in range(10) for round_number in range(10)}
    assert len(seeds) == 100 and min(seeds) >= 1
    assert party_seed(42, 3, 4) == party_seed(42, 3, 4) != party_seed(43, 3, 4)


@pytest.mark.parametrize("aggregator", ["fedbpt", "fedavg"])
def test_federated_rounds_of_local_searches_lower_a_toy_objective(aggregator):
    spec = from_dict(
        {
            "prompt": {"dim": DIM, "starts": ["preamble"]},
            "federation": {"parties": 4, "rounds": 8, "aggregator": aggregator},
            "search": {"population": 5, "iterations": 4, "step": 0.5, "perturb_rate": 0},
            "wire": "float32",
        }
    )
    state = rounds.initial(spec)
    while rounds.kind(spec, state) == "search":
        loss = float(sphere(state.mean[None])[0])
        reports = [
            local_search(state, sphere, spec.search, party_seed(1, party, state.round), f"p{party}", 10, loss)
            for party in range(4)
        ]
        state, _ = rounds.close(spec, state, reports)
    assert sphere(state.mean[None])[0] < 0.5 * START_LOSS
    assert rounds.best_prompt(state).loss < START_LOSS


# respond() on the tiny model

SPEC = from_dict(
    {
        "prompt": {"dim": 16, "n_tokens": 4},
        "federation": {"parties": 2, "rounds": 2},
        "search": {"population": 3, "iterations": 2, "step": 0.5},
        "data": {"validation": 0.0},  # every example both searches and scores (one test below sets a share)
    }
)
ROWS = builtin_task("sst2").load_train()[:6]
LABELS = np.array([row.label for row in ROWS])


@pytest.fixture(scope="module")
def model(backend):
    return prompted_model(SPEC, backend)


def test_in_the_start_round_a_party_reports_its_loss_of_every_start(model):
    examples = model.encode(ROWS)
    report = respond(SPEC, rounds.initial(SPEC), model, examples, LABELS, 0, "p0")
    assert isinstance(report, Scores) and (report.party, report.round, report.n_examples) == ("p0", 0, 6)
    zero = np.zeros((1, 16))
    expected = [float(model.with_start(start).loss(zero, examples, LABELS)[0]) for start in SPEC.prompt.starts]
    assert list(report.losses) == pytest.approx(expected)
    assert len(set(report.losses)) > 1
    rounds.validate(SPEC, rounds.initial(SPEC), report)


def search_round() -> GlobalState:
    mean = on_wire(np.random.default_rng(0).normal(size=16), SPEC.wire)
    return GlobalState(1, mean, 0.5, "vocabulary", 0, Best(0, np.zeros(16), 0.7))


def test_in_a_search_round_a_party_reports_its_update_and_its_loss_of_the_rounds_prompt(model):
    examples = model.encode(ROWS)
    state = search_round()
    report = respond(SPEC, state, model, examples, LABELS, 1, "p1")
    assert isinstance(report, Update) and (report.party, report.round, report.n_examples) == ("p1", 1, 6)
    scorer = model.with_start("vocabulary")  # the round's start, not the model's own first start
    assert model.start != "vocabulary"
    assert report.loss == pytest.approx(float(scorer.loss(state.mean[None], examples, LABELS)[0]))
    assert report.loss != pytest.approx(float(model.loss(state.mean[None], examples, LABELS)[0]))
    assert len(report.sigmas) == SPEC.search.iterations and not np.array_equal(report.mean, state.mean)
    np.testing.assert_array_equal(report.mean, on_wire(report.mean, SPEC.wire))
    rounds.validate(SPEC, state, report)


def test_a_search_round_report_is_reproducible_and_differs_between_parties(model):
    examples = model.encode(ROWS)
    first, again, other = (respond(SPEC, search_round(), model, examples, LABELS, i, "p") for i in (1, 1, 2))
    np.testing.assert_array_equal(first.mean, again.mean)
    assert first.fitness == again.fitness
    assert not np.array_equal(first.mean, other.mean)


def test_in_the_final_round_a_party_reports_its_loss_of_the_last_prompt(model):
    examples = model.encode(ROWS)
    search = search_round()
    state = GlobalState(SPEC.federation.rounds + 1, search.mean, 0.5, "vocabulary", 2, search.best)
    report = respond(SPEC, state, model, examples, LABELS, 0, "p0")
    assert isinstance(report, Scores) and report.round == 3 and len(report.losses) == 1
    expected = model.with_start("vocabulary").loss(state.mean[None], examples, LABELS)[0]
    assert report.losses[0] == pytest.approx(float(expected))
    rounds.validate(SPEC, state, report)


def test_with_a_validation_share_the_rounds_prompt_is_scored_on_examples_the_search_does_not_see(model):
    spec = replace(SPEC, data={"validation": 0.5})
    examples = model.encode(ROWS)
    state = search_round()
    report = respond(spec, state, model, examples, LABELS, 1, "p1")
    searching, scoring = validation_split(len(ROWS), 0.5, party_seed(spec.seed, 1, 0))
    assert len(scoring) == 3 and not set(searching) & set(scoring) and report.n_examples == 6
    scorer = model.with_start("vocabulary")
    held = [examples[i] for i in scoring]
    assert report.loss == pytest.approx(float(scorer.loss(state.mean[None], held, LABELS[scoring])[0]))
    start = respond(spec, rounds.initial(spec), model, examples, LABELS, 1, "p1")  # the start: all examples
    zero = np.zeros((1, 16))
    assert start.losses[0] == pytest.approx(
        float(model.with_start(spec.prompt.starts[0]).loss(zero, examples, LABELS)[0])
    )

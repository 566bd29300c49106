"""The simulator on the tiny model: best-so-far never worse than the start, determinism, the results file."""

import json

import numpy as np
import pytest

from fedbpt import results as results_module
from fedbpt import rounds, simulate
from fedbpt.attacks import Attack
from fedbpt.data import Example
from fedbpt.federation import round_parties
from fedbpt.protocol import decode_vector
from fedbpt.spec import from_dict, replace

SETTINGS = {
    "federation": {"parties": 3, "rounds": 3},
    # Every example both searches and scores, so the start round's loss compares with the later rounds' losses.
    "data": {"examples_per_party": 4, "eval_examples": 8, "validation": 0.0},
    "prompt": {"dim": 16, "n_tokens": 4},
    "search": {"step": 0.5, "population": 3, "iterations": 2},
}
SPEC = from_dict(SETTINGS)
RUNS = [(seed, aggregator) for seed in (3, 4) for aggregator in ("fedbpt", "fedavg")]  # both seeds backtrack


def run_spec(seed: int, aggregator: str):
    return replace(SPEC, seed=seed, federation={"aggregator": aggregator})


@pytest.fixture(scope="module")
def runs(backend, tmp_path_factory):
    """Each run's results, and the results file it wrote (the held-out set scored every 2 rounds)."""
    folder = tmp_path_factory.mktemp("runs")
    found = {}
    for seed, aggregator in RUNS:
        out = folder / f"{aggregator}-{seed}.json"
        found[seed, aggregator] = simulate.simulate(run_spec(seed, aggregator), backend, out, eval_every=2), out
    return found


TIMINGS = ("seconds", "elapsed", "bytes_per_party")  # a report's size holds its time, so it varies by a byte


def without_timings(value):
    if isinstance(value, dict):
        return {key: without_timings(item) for key, item in value.items() if key not in TIMINGS}
    if isinstance(value, list):
        return [without_timings(item) for item in value]
    return value


@pytest.mark.parametrize("seed, aggregator", RUNS)
def test_the_returned_prompt_is_never_worse_than_the_chosen_start(runs, seed, aggregator):
    results, _ = runs[seed, aggregator]
    start_record = results["rounds"][0]
    assert start_record["kind"] == "start" and start_record["start"] == results["start"]
    assert results["prompt"]["loss"] <= start_record["loss"]
    # every party scores every round here, so the best is the lowest pooled loss of any scored prompt
    assert results["prompt"]["loss"] == pytest.approx(min(record["loss"] for record in results["rounds"]))
    assert results["prompt"]["round"] == results["best_round"] and results["prompt"]["start"] == results["start"]


@pytest.mark.parametrize("seed, aggregator", RUNS)
def test_after_a_backtrack_the_next_round_scores_the_best_again(runs, seed, aggregator):
    records = runs[seed, aggregator][0]["rounds"]
    backtracked = [i for i, record in enumerate(records) if record.get("backtracked")]
    assert backtracked  # these seeds were chosen because one of their rounds was worse than the best
    for i in backtracked:
        if i + 1 == len(records):  # the last search round backtracked: the job ends on the best
            assert records[i]["round"] == SPEC.federation.rounds
            continue
        assert records[i + 1]["scored_round"] == records[i]["best_round"]
        assert records[i + 1]["loss"] == pytest.approx(min(r["loss"] for r in records[: i + 1]))


@pytest.mark.parametrize("seed, aggregator", RUNS)
def test_a_run_has_a_start_round_search_rounds_and_a_final_round_unless_the_last_search_backtracked(
    runs, seed, aggregator
):
    results, _ = runs[seed, aggregator]
    kinds = [record["kind"] for record in results["rounds"]]
    last_search = results["rounds"][3]
    assert kinds == ["start", "search", "search", "search"] + ([] if last_search["backtracked"] else ["final"])
    assert [record["round"] for record in results["rounds"]] == list(range(len(kinds)))
    assert results["status"] == "finished"
    assert all(len(record["parties"]) == 3 for record in results["rounds"])
    assert rounds.finished(SPEC, rounds.GlobalState.from_dict(results["state"]))


def test_the_simulator_gives_identical_results_for_identical_specs(runs, backend):
    first = runs[3, "fedbpt"][0]
    again = simulate.simulate(run_spec(3, "fedbpt"), backend, eval_every=2)
    assert without_timings(again) == without_timings(first)
    for old, new in zip(first["rounds"], again["rounds"], strict=True):  # a report's "seconds" varies in length
        assert abs(old["bytes_per_party"]["sent"] - new["bytes_per_party"]["sent"]) <= 8


def test_other_seeds_give_other_prompts(runs):
    assert runs[3, "fedbpt"][0]["prompt"]["z"] != runs[4, "fedbpt"][0]["prompt"]["z"]


def test_the_results_file_holds_the_returned_results(runs):
    results, out = runs[3, "fedbpt"]
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    assert from_dict(saved["spec"]) == run_spec(3, "fedbpt")
    assert sum(saved["party_examples"]) == 12 and np.array(saved["party_class_histogram"]).sum() == 12
    assert not list(out.parent.glob("*.partial"))


def test_the_held_out_set_is_scored_after_the_start_every_eval_every_rounds_and_for_the_returned_prompt(runs):
    results, _ = runs[3, "fedbpt"]
    with_accuracy = [record["round"] for record in results["rounds"] if "accuracy" in record]
    assert with_accuracy == [0, 2]
    assert results["final_accuracy"] == results["accuracy"][str(results["best_round"])]
    assert results["start_accuracy"] == results["accuracy"]["0"] == results["rounds"][0]["accuracy"]
    assert all(0 <= value <= 1 for value in results["accuracy"].values())


def test_the_returned_prompt_scores_its_accuracy_on_the_held_out_set(runs, backend):
    results, _ = runs[4, "fedavg"]
    spec = run_spec(4, "fedavg")
    federation = simulate.prepare(spec, backend)
    model = federation.model.with_start(results["start"])
    z = decode_vector(results["prompt"]["z"])
    assert z.shape == (16,)
    assert results["final_accuracy"] == model.accuracy(z, federation.eval_set, federation.eval_labels)


def test_zero_shot_is_the_bare_template_raw_and_calibrated(runs, backend):
    results, _ = runs[3, "fedbpt"]
    federation = simulate.prepare(run_spec(3, "fedbpt"), backend)
    model = federation.model
    raw = model.logits(None, federation.eval_set)[0].argmax(-1)
    assert results["zero_shot"] == pytest.approx((raw == federation.eval_labels).mean())
    assert results["zero_shot_calibrated"] == model.accuracy(None, federation.eval_set, federation.eval_labels)


def test_the_summary_and_its_last_line_show_the_run(runs):
    results, _ = runs[4, "fedbpt"]
    text = results_module.summary(results)
    assert "fedbpt on sst2" in text and "backtracked to the best" in text and "returned prompt: after round" in text
    figures = dict(part.split("=") for part in results_module.summary_line(results).split())
    assert figures["task"] == "sst2"
    for key in ("start", "last", "final"):
        assert float(figures[key]) == pytest.approx(results[f"{key}_accuracy"], abs=1e-4)
    assert int(figures["bytes_per_party_round"]) > 0


def test_an_interrupted_run_keeps_its_finished_rounds(backend, tmp_path, monkeypatch):
    calls = []
    real_respond = simulate.respond

    def respond_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) > 6:  # the start round and round 1 are done: Ctrl-C in round 2
            raise KeyboardInterrupt
        return real_respond(*args, **kwargs)

    monkeypatch.setattr(simulate, "respond", respond_then_interrupt)
    out = tmp_path / "run.json"
    results = simulate.simulate(SPEC, backend, out)
    saved = json.loads(out.read_text())
    assert saved["status"] == results["status"] == "interrupted"
    assert [record["round"] for record in saved["rounds"]] == [0, 1]
    assert "prompt" not in saved and "final_accuracy" not in saved
    assert rounds.GlobalState.from_dict(saved["state"]).round == 2


def test_a_round_draws_parties_per_round_from_the_seed():
    spec = from_dict({"federation": {"parties": 10, "parties_per_round": 4}})
    drawn = [round_parties(spec, number) for number in range(1, 6)]
    assert all(len(chosen) == 4 and list(chosen) == sorted(set(chosen)) for chosen in drawn)
    assert len({tuple(chosen) for chosen in drawn}) > 1
    np.testing.assert_array_equal(round_parties(spec, 3), drawn[2])
    assert round_parties(from_dict({"federation": {"parties": 4}}), 1).tolist() == [0, 1, 2, 3]


def test_with_parties_per_round_only_the_drawn_parties_report(backend):
    spec = replace(SPEC, federation={"parties": 3, "parties_per_round": 2, "rounds": 1})
    results = simulate.simulate(spec, backend)
    for record in results["rounds"]:
        expected = [f"party-{i}" for i in round_parties(spec, record["round"])]
        assert record["parties"] == expected


def test_prepare_deals_each_party_its_share(backend):
    federation = simulate.prepare(SPEC, backend)
    assert len(federation.parties) == 3 and len(federation.eval_set) == 8
    assert all(len(party.examples) == len(party.labels) > 0 for party in federation.parties)
    assert federation.histogram.sum() == 12 and federation.histogram.shape == (3, 2)
    sst2 = federation.model.task
    first = sst2.load_eval()[0]
    assert federation.eval_set[0] == federation.model.encode([Example(first.text, first.label)])[0]


def test_with_one_start_there_is_no_start_round(backend):
    spec = replace(SPEC, prompt={"starts": ["vocabulary"]}, federation={"rounds": 1})
    federation = simulate.prepare(spec, backend)
    state, record = simulate.start_round(spec, federation)
    assert record is None and (state.round, state.start) == (1, "vocabulary")
    results = simulate.simulate(spec, backend)
    assert [record["kind"] for record in results["rounds"]] == ["search", "final"]
    assert results["start"] == "vocabulary" and results["prompt"]["loss"] <= results["rounds"][0]["loss"]


def test_with_a_validation_share_the_best_is_compared_on_the_held_back_examples(backend):
    spec = replace(SPEC, seed=5, data={"examples_per_party": 8, "validation": 0.25})
    results = simulate.simulate(spec, backend)
    searched = [record for record in results["rounds"] if record["kind"] != "start"]
    first = searched[0]  # round 1 scores the start (round 0's prompt) on the held-back examples
    assert first["scored_round"] == 0
    assert first["loss"] != pytest.approx(results["rounds"][0]["loss"])  # the start round used every example
    assert results["prompt"]["loss"] <= first["loss"]


def attack_spec(robust: str):
    small = {"parties": 5, "rounds": 2, "robust": robust, "trim": 0.2}
    return from_dict(
        {
            "prompt": {"dim": 16, "n_tokens": 2},
            "search": {"population": 4, "iterations": 2},
            "federation": small,
            "data": {"examples_per_party": 6, "eval_examples": 20},
        }
    )


def test_a_party_faking_a_near_zero_loss_steers_the_plain_pooled_loss_but_not_the_trimmed_one(backend):
    liar = Attack("fake-loss", (0,))
    plain = simulate.simulate(attack_spec("none"), backend, attack=liar)
    honest = simulate.simulate(attack_spec("none"), backend)
    robust = simulate.simulate(attack_spec("trimmed"), backend, attack=liar)
    start = [record for record in honest["rounds"] if record["kind"] == "start"][0]
    faked = [record for record in plain["rounds"] if record["kind"] == "start"][0]
    trimmed = [record for record in robust["rounds"] if record["kind"] == "start"][0]
    assert all(faked["start_losses"][name] < start["start_losses"][name] for name in start["start_losses"])
    assert all(trimmed["start_losses"][name] > faked["start_losses"][name] for name in start["start_losses"])
    assert plain["attack"] == {"kind": "fake-loss", "parties": [0]} and honest["attack"] is None


def test_the_fake_mean_lands_in_the_plain_global_mean_and_not_in_the_clipped_one(backend):
    liar = Attack("fake-loss", (0,))
    plain = simulate.simulate(attack_spec("none"), backend, attack=liar)
    clipped = simulate.simulate(attack_spec("clip"), backend, attack=liar)
    first = lambda results: next(r for r in results["rounds"] if r["kind"] == "search")  # noqa: E731
    assert first(plain)["mean_norm"] > 100  # the liar's mean has norm 5,000 and the best fake fitness
    assert first(clipped)["mean_norm"] < 10


def test_a_private_federation_records_the_epsilon_spent_after_each_round(backend, tmp_path):
    spec = replace(attack_spec("none"), privacy={"clip": 0.5, "noise": 1.0})
    results = simulate.simulate(spec, backend, tmp_path / "private.json")
    spent = [record["epsilon"] for record in results["rounds"]]
    assert len(spent) == len(results["rounds"]) and spent == sorted(spent) and spent[0] > 0
    events = [json.loads(line) for line in (tmp_path / "private.events.jsonl").read_text().splitlines()]
    assert [event["epsilon"] for event in events if event["event"] == "round"] == spent


def test_under_cross_the_liars_mean_is_ranked_by_the_others_losses_in_a_rank_round_after_each_search(backend):
    liar = Attack("fake-loss", (0,))
    results = simulate.simulate(attack_spec("cross"), backend, attack=liar)
    assert [record["kind"] for record in results["rounds"]] == ["start", "search", "rank", "search", "rank", "final"]
    for search, rank in zip(results["rounds"][1::2], results["rounds"][2::2], strict=False):
        assert search["candidates"] == 5 and set(rank["cross_losses"]) == set(search["parties"])
        assert rank["cross_losses"]["party-0"] > 0.1  # what the others measured, not the liar's 0.001
    assert results["best_round"] in (0, 2, 4)  # a prompt is made by the start or a rank round
    assert "ranked 5 means by the parties' losses" in results_module.summary(results)

"""Baselines and the comparison harness on the tiny random-weight model (real SST-2 rows)."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_backend

from fedbpt import spec as specs
from fedbpt.backends import EncodedExample
from fedbpt.baselines import incontext, prompt_tuning
from fedbpt.baselines.federated import GRADIENT_METHODS, download_bytes, run_gradient, upload_bytes
from fedbpt.compare import METHODS, CompareConfig, compare, parse_list
from fedbpt.federation import prepare
from fedbpt.job import LearnedPrompt
from fedbpt.simulate import start_round
from fedbpt.spec import from_dict

SMALL = from_dict(
    {
        "seed": 3,
        "federation": {"parties": 3, "rounds": 1},
        "data": {"examples_per_party": 6, "eval_examples": 12},
        "prompt": {"dim": 16, "n_tokens": 4},
        "search": {"population": 2, "iterations": 1},
    }
)


@pytest.fixture(scope="module")
def federation(backend):
    return prepare(SMALL, backend)


def base64_bytes(n_floats: int) -> int:
    return 4 * math.ceil(4 * n_floats / 3)


def test_a_party_round_trains_only_the_prompt_parameters():
    backend = tiny_backend(seed=5)  # its own model: this test checks the weights stay bit-identical
    federation = prepare(SMALL, backend)
    party = federation.parties[0]
    weights = {name: tensor.clone() for name, tensor in backend.model.state_dict().items()}
    flags = [parameter.requires_grad for parameter in backend.model.parameters()]
    start = prompt_tuning.initial_soft_prompt(federation.model)
    for round_function, initial in (
        (prompt_tuning.fedprompt_round, start),
        (prompt_tuning.fedptuning_round, prompt_tuning.initial_deep_prompt(federation.model)),
    ):
        trained, stats = round_function(federation.model, initial, party.examples, party.labels, seed=1)
        assert trained.shape == initial.shape and not np.array_equal(trained, initial)
        assert stats.n_examples == len(party.labels) and stats.steps == math.ceil(len(party.labels) / 8)
        assert stats.loss > 0
    assert all(torch.equal(weights[name], tensor) for name, tensor in backend.model.state_dict().items())
    assert [parameter.requires_grad for parameter in backend.model.parameters()] == flags
    assert np.array_equal(start, federation.model.p0)


def test_a_party_round_is_reproducible_per_seed(federation):
    party, start = federation.parties[1], federation.model.p0
    training = prompt_tuning.LocalTraining(batch_size=2)  # several batches, so the seeded order matters
    first, again, other = (
        prompt_tuning.fedprompt_round(federation.model, start, party.examples, party.labels, training, seed)[0]
        for seed in (1, 1, 2)
    )
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_a_soft_prompt_of_the_wrong_shape_is_refused(federation):
    party = federation.parties[0]
    with pytest.raises(ValueError, match="soft prompt is"):
        prompt_tuning.fedprompt_round(federation.model, np.zeros((2, 3)), party.examples, party.labels)


def test_deep_prompt_starts_where_the_soft_prompt_starts_and_gets_gradients(federation):
    model, examples = federation.model, federation.eval_set[:6]
    prefix = prompt_tuning.initial_deep_prompt(model)
    deep = prompt_tuning.predict_logits(prompt_tuning.deep_prompt_logits, model, prefix, examples)
    soft = model.backend.label_logits(model.p0[None], examples, model.label_ids)[0]
    np.testing.assert_allclose(deep, soft, atol=1e-4)
    trainable = torch.tensor(prefix, requires_grad=True)
    with prompt_tuning.frozen(model.backend.model):
        prompt_tuning.deep_prompt_logits(model, trainable, examples).sum().backward()
    assert all(float(layer.abs().sum()) > 0 for layer in trainable.grad)  # every layer's keys and values


@pytest.fixture(scope="module")
def gradient_runs(backend):
    training = prompt_tuning.LocalTraining()
    return {method: run_gradient(method, SMALL, training, backend) for method in GRADIENT_METHODS}


def test_gradient_runs_report_start_and_final_accuracy(gradient_runs):
    for method, results in gradient_runs.items():
        assert results["status"] == "finished" and results["method"] == method
        assert 0 <= results["start_accuracy"] <= 1 and 0 <= results["final_accuracy"] <= 1
        assert results["final_accuracy"] == results["rounds"][-1]["accuracy"] == results["accuracy"]["1"]
        assert results["best_round"] == results["last_round"] == 1
        assert [record["kind"] for record in results["rounds"]] == ["start", "search"]


def test_gradient_runs_start_from_the_start_fedbpt_chooses_and_score_it_as_fedbpt_does(gradient_runs, federation):
    state, record = start_round(SMALL, federation)
    model = federation.model.with_start(state.start)
    fedbpt_start = model.accuracy(np.zeros(SMALL.prompt.dim), federation.eval_set, federation.eval_labels)
    for results in gradient_runs.values():
        start_record = results["rounds"][0]
        assert results["start"] == start_record["start"] == state.start
        assert start_record["start_losses"] == record["start_losses"]
        assert results["start_accuracy"] == fedbpt_start  # calibrated, like FedBPT's


def test_trainable_parameters_and_bytes_follow_their_formulas(gradient_runs, backend):
    config = backend.model.config
    kv_width = config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    expected = {
        "fedprompt": SMALL.prompt.n_tokens * backend.hidden_size,
        "fedptuning": config.num_hidden_layers * 2 * kv_width * (len(backend.bos_ids) + SMALL.prompt.n_tokens),
    }
    for method, count in expected.items():
        results = gradient_runs[method]
        assert results["trainable_parameters"] == count
        record = results["rounds"][1]
        assert len(record["parties"]) == SMALL.federation.parties
        # base64 float32 of the tensor plus a JSON envelope of a few dozen bytes
        assert 0 < record["bytes_per_party"]["sent"] - base64_bytes(count) < 80
        assert 0 < record["bytes_per_party"]["received"] - base64_bytes(count) < 40
    envelope = len('"kind": "prompt", ') + len(', "n": 1')  # what an upload holds beyond a download
    assert upload_bytes(0, np.zeros(3), 1) - download_bytes(0, np.zeros(3)) == envelope


def test_a_gradient_run_with_one_start_has_only_search_rounds(backend):
    # BUG (fedbpt/baselines/federated.py, run_gradient): with a single start there is no start round, and
    # start_round returns (state, None); run_gradient still stores [None] as the first round record, so
    # compare.summarize (record["kind"]) fails with "TypeError: 'NoneType' object is not subscriptable" for
    # `fedbpt compare --starts preamble`. Suggested fix: "rounds": [start_record] if start_record else [].
    spec = specs.replace(SMALL, prompt={"starts": ["preamble"]})
    results = run_gradient("fedprompt", spec, prompt_tuning.LocalTraining(), backend)
    assert results["start"] == "preamble"
    assert [record["kind"] for record in results["rounds"] if record is not None] == ["search"]
    assert None not in results["rounds"]


def test_an_unknown_gradient_method_is_refused(backend):
    with pytest.raises(ValueError, match="method must be one of"):
        run_gradient("fedsgd", SMALL, prompt_tuning.LocalTraining(), backend)


def test_local_training_settings_are_checked():
    with pytest.raises(ValueError, match="epochs and batch_size"):
        prompt_tuning.LocalTraining(epochs=0)
    with pytest.raises(ValueError, match="learning_rate"):
        prompt_tuning.LocalTraining(learning_rate=0)


def test_in_context_demonstrations_come_from_the_party_and_take_labels_in_turn(federation):
    labels = np.array([0, 0, 0, 1, 0])
    chosen = incontext.pick_demonstrations(labels, 4, seed=7)
    assert len(chosen) == 4 and sorted(labels[chosen].tolist()) == [0, 0, 0, 1]
    assert len(incontext.pick_demonstrations(labels[:2], 4, seed=7)) == 2
    party = federation.parties[0]
    demonstrations = incontext.demonstration_ids(federation.model, party.examples, party.labels, [0])
    assert demonstrations[: len(party.examples[0].ids)] == party.examples[0].ids
    assert demonstrations[len(party.examples[0].ids)] == federation.model.label_ids[party.labels[0]]


def in_context_by_hand(federation, count: int, seed: int, calibrate: bool) -> list[float]:
    """Each party's accuracy with its demonstrations before every held-out and content-free input."""
    from fedbpt.federation import party_seed

    model, accuracies = federation.model, []
    for index, party in enumerate(federation.parties):
        chosen = incontext.pick_demonstrations(party.labels, count, party_seed(seed, index, 0))
        head = incontext.demonstration_ids(model, party.examples, party.labels, chosen)

        def logits(examples: list[EncodedExample], head=head) -> np.ndarray:
            prompted = incontext.with_demonstrations(head, examples)
            return model.backend.label_logits(None, prompted, model.label_ids, "before")[0]

        probabilities = softmax(logits(federation.eval_set))
        if calibrate:
            probabilities = probabilities / softmax(logits(model.content_free)).mean(axis=0)
        accuracies.append(float((probabilities.argmax(-1) == federation.eval_labels).mean()))
    return accuracies


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def test_in_context_accuracies_are_calibrated_when_the_model_calibrates(federation):
    raw_federation = replace(federation, model=replace(federation.model, calibrate=False))
    calibrated = incontext.in_context_accuracies(federation, 4, seed=3)
    raw = incontext.in_context_accuracies(raw_federation, 4, seed=3)
    assert calibrated == pytest.approx(in_context_by_hand(federation, 4, 3, calibrate=True))
    assert raw == pytest.approx(in_context_by_hand(federation, 4, 3, calibrate=False))
    assert calibrated != raw and len(calibrated) == SMALL.federation.parties


def test_method_lists_are_checked():
    assert parse_list("all", METHODS, "methods") == METHODS
    assert parse_list("fedbpt, zero-shot", METHODS, "methods") == ("zero-shot", "fedbpt")
    with pytest.raises(ValueError, match="fedsgd"):
        parse_list("fedbpt,fedsgd", METHODS, "methods")
    with pytest.raises(ValueError, match="partition"):
        CompareConfig(partitions=("iid", "shards"))


COMPARED = ("zero-shot", "start", "fedbpt")


def compare_config(**changes) -> CompareConfig:
    spec = from_dict(
        {
            "federation": {"parties": 2, "rounds": 1},
            "data": {"examples_per_party": 3, "eval_examples": 6},
            "prompt": {"dim": 8, "n_tokens": 2},
            "search": {"population": 2, "iterations": 1},
        }
    )
    return replace(CompareConfig(spec=spec, methods=COMPARED, partitions=("iid",), seeds=1), **changes)


def test_compare_writes_table_results_and_prompts_and_resumes(backend, tmp_path):
    config = compare_config()
    results = compare(config, backend, tmp_path)
    assert [run["method"] for run in results["runs"]] == list(COMPARED)
    assert all(run["status"] == "finished" and 0 <= run["final_accuracy"] <= 1 for run in results["runs"])
    table = (tmp_path / "table.md").read_text()
    for label in ("Zero-shot (manual template)", "Chosen start (z = 0)", "FedBPT"):
        assert table.count(f"| {label} |") == 1
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["runs"]) == len(COMPARED) and saved["shared"] == json.loads(json.dumps(config.shared()))
    [prompt_file] = (tmp_path / "prompts").glob("*.json")
    assert prompt_file.name == f"fedbpt-iid-{config.spec.seed}.json"
    learned = LearnedPrompt.load(prompt_file)
    fedbpt_run = results["runs"][-1]["results"]
    assert learned.spec == config.run_spec("fedbpt", "iid", config.spec.seed)
    assert learned.start == fedbpt_run["start"] and learned.loss == fedbpt_run["prompt"]["loss"]
    again = compare(replace(config, methods=("zero-shot",)), backend, tmp_path)  # finished: nothing reruns
    assert [run["final_accuracy"] for run in again["runs"]] == [run["final_accuracy"] for run in results["runs"]]
    assert (tmp_path / "table.md").read_text() == table  # every run of the folder, not only this call's methods


@pytest.fixture(scope="module")
def zero_shot_folder(backend, tmp_path_factory):
    """A comparison folder holding one finished zero-shot run."""
    folder = tmp_path_factory.mktemp("compare")
    compare(compare_config(methods=("zero-shot",)), backend, folder)
    return folder


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"spec": specs.replace(compare_config().spec, search={"population": 3})}, "spec.search.population: 2 there"),
        ({"spec": specs.replace(compare_config().spec, prompt={"calibrate": False})}, "spec.prompt.calibrate"),
        ({"epochs": 2}, "epochs: 1 there, 2 here"),
    ],
)
def test_compare_refuses_to_resume_a_folder_made_with_other_settings(backend, zero_shot_folder, changes, key):
    with pytest.raises(ValueError, match="other settings") as error:
        compare(compare_config(methods=("zero-shot",), **changes), backend, zero_shot_folder)
    assert key in str(error.value)


def test_compare_adds_seeds_to_a_folder_of_the_same_settings(backend, zero_shot_folder):
    results = compare(compare_config(methods=("zero-shot",), seeds=2), backend, zero_shot_folder)
    assert [(run["method"], run["seed"]) for run in results["runs"]] == [("zero-shot", 42), ("zero-shot", 43)]

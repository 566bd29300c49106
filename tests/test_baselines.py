"""Baselines and the comparison harness on the tiny random-weight model (real SST-2 rows)."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_backend

from fedbpt.baselines import incontext, prompt_tuning
from fedbpt.baselines.federated import download_bytes, run_gradient, upload_bytes
from fedbpt.compare import METHODS, CompareConfig, compare, parse_list
from fedbpt.simulate import SimulationConfig, prepare

SMALL = SimulationConfig(parties=3, rounds=1, examples_per_party=6, eval_examples=12, n_tokens=4, seed=3)


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
    assert all(torch.equal(weights[name], tensor) for name, tensor in backend.model.state_dict().items())
    assert [parameter.requires_grad for parameter in backend.model.parameters()] == flags
    assert np.array_equal(start, federation.model.p0)


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


def test_trainable_parameters_and_bytes_follow_their_formulas(backend):
    config = backend.model.config
    kv_width = config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    expected = {
        "fedprompt": SMALL.n_tokens * backend.hidden_size,
        "fedptuning": config.num_hidden_layers * 2 * kv_width * (len(backend.bos_ids) + SMALL.n_tokens),
    }
    for method, count in expected.items():
        results = run_gradient(method, SMALL, prompt_tuning.LocalTraining(), backend)
        assert results["status"] == "finished" and results["trainable_parameters"] == count
        record = results["rounds"][0]
        assert 0 <= record["accuracy"] <= 1 and len(record["parties"]) == SMALL.parties
        # base64 float32 of the tensor plus a JSON envelope of a few dozen bytes
        assert 0 < record["bytes_per_party"]["sent"] - base64_bytes(count) < 80
        assert 0 < record["bytes_per_party"]["received"] - base64_bytes(count) < 40
    assert upload_bytes("p", 0, np.zeros(3), 1) - download_bytes(0, np.zeros(3)) == len(', "party": "p", "n": 1')


def test_in_context_demonstrations_come_from_the_party_and_take_labels_in_turn(federation):
    labels = np.array([0, 0, 0, 1, 0])
    chosen = incontext.pick_demonstrations(labels, 4, seed=7)
    assert len(chosen) == 4 and sorted(labels[chosen].tolist()) == [0, 0, 0, 1]
    assert len(incontext.pick_demonstrations(labels[:2], 4, seed=7)) == 2
    party = federation.parties[0]
    demonstrations = incontext.demonstration_ids(federation.model, party.examples, party.labels, [0])
    assert demonstrations[: len(party.examples[0].ids)] == party.examples[0].ids
    assert demonstrations[len(party.examples[0].ids)] == federation.model.label_ids[party.labels[0]]
    accuracies = incontext.in_context_accuracies(federation, 4, seed=3)
    assert len(accuracies) == SMALL.parties and all(0 <= a <= 1 for a in accuracies)


def test_method_lists_are_checked():
    assert parse_list("all", METHODS, "methods") == METHODS
    assert parse_list("fedbpt, zero-shot", METHODS, "methods") == ("zero-shot", "fedbpt")
    with pytest.raises(ValueError, match="fedsgd"):
        parse_list("fedbpt,fedsgd", METHODS, "methods")
    with pytest.raises(ValueError, match="partition"):
        CompareConfig(partitions=("iid", "shards"))


def test_compare_writes_table_plots_and_resumes(backend, tmp_path):
    config = CompareConfig(
        partitions=("dirichlet",),
        clients=3,
        seeds=1,
        rounds=1,
        examples_per_party=4,
        eval_examples=8,
        population=2,
        local_iterations=1,
        demonstrations=2,
    )
    results = compare(config, backend, tmp_path)
    assert len(results["runs"]) == len(METHODS)
    assert all(run["status"] == "finished" and 0 <= run["final_accuracy"] <= 1 for run in results["runs"])
    assert all(run["peak_rss_bytes"] > 2**20 for run in results["runs"])
    table = (tmp_path / "table.md").read_text()
    for label in ("FedBPT", "FedAvg-BBT", "FedPrompt", "FedP-tuning", "Zero-shot", "In-context"):
        assert table.count(f"| {label}") == 1
    assert (tmp_path / "accuracy_vs_round.png").stat().st_size > 0
    assert (tmp_path / "accuracy_vs_bytes.png").stat().st_size > 0
    by_method = {run["method"]: run for run in results["runs"]}
    assert by_method["fedbpt"]["trainable_parameters"] == 500 and by_method["zero-shot"]["bytes_up"] == 0
    assert by_method["fedbpt"]["curve"][-1][2] == 3 * (
        by_method["fedbpt"]["bytes_up"] + by_method["fedbpt"]["bytes_down"]
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["runs"]) == len(results["runs"])
    again = compare(replace(config, methods=("zero-shot",)), backend, tmp_path)  # finished: nothing reruns
    assert [run["final_accuracy"] for run in again["runs"]] == [run["final_accuracy"] for run in results["runs"]]
    assert (tmp_path / "table.md").read_text() == table  # every run of the folder, not only this call's methods
    with pytest.raises(ValueError, match="other settings"):
        compare(replace(config, rounds=2), backend, tmp_path)


def test_compare_command_rejects_unknown_methods_before_loading_a_model(tmp_path):
    from typer.testing import CliRunner

    from fedbpt.cli import app

    result = CliRunner().invoke(app, ["compare", "--methods", "fedbpt,fedsgd", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown methods ['fedsgd']" in result.output
    assert not any(tmp_path.iterdir())

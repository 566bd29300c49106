"""The Flower app. On the Simulation Engine with the tiny model, a Flower run ends in the global state
``fedbpt simulate`` ends in (same search, aggregation and party seeds), scores the same held-out accuracies by
federated evaluation and writes a prompt file; a node on another model is refused before any round. On the
Deployment Engine (real SuperLink and SuperNode processes), an edge node on llama.cpp takes part without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation
from serving import ROOT
from tiny_gguf import write_tiny_gguf

from clients.flower import NodeSettings
from clients.flower import app as client_app
from fedbpt import flower
from fedbpt.backends.llama import quantize
from fedbpt.errors import UserError
from fedbpt.job import LearnedPrompt, pin
from fedbpt.models import load_backend
from fedbpt.protocol import GlobalState, InvalidUpdate, Scores, Update, on_wire
from fedbpt.simulate import simulate
from fedbpt.spec import JobSpec, from_dict, replace, to_toml
from server.flower import RunSettings, run

PARTIES = 3


def small_spec(model: str):
    """Three parties of 6 SST-2 sentences, two candidate starts (a start round), two short search rounds."""
    return from_dict(
        {
            "model": {"name": model},
            "prompt": {"dim": 16, "n_tokens": 3, "starts": ["preamble", "vocabulary"]},
            "search": {"population": 4, "iterations": 2, "step": 0.5},
            "federation": {"parties": PARTIES, "rounds": 2},
            "data": {"examples_per_party": 6, "eval_examples": 30},
        }
    )


def flower_run(settings: RunSettings) -> None:
    """``settings`` run by the ServerApp on the Simulation Engine with one virtual node per party."""
    server_app = ServerApp()
    server_app.main()(lambda grid, context: run(grid, settings))
    resources = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 1}}
    run_simulation(server_app, client_app, num_supernodes=PARTIES, backend_config=resources)


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    spec = small_spec(str(tiny_model_dir))
    out = tmp_path_factory.mktemp("flower") / "flower.json"
    flower_run(RunSettings(spec, out=out))
    simulated = simulate(spec, load_backend(str(tiny_model_dir), threads=1))
    return json.loads(out.read_text()), simulated, out


def test_a_flower_run_ends_in_the_global_state_of_fedbpt_simulate(runs):
    flower, simulated, _ = runs
    assert flower["status"] == "finished"
    ours, theirs = GlobalState.from_dict(flower["state"]), GlobalState.from_dict(simulated["state"])
    assert ours.round == theirs.round and ours.start == theirs.start and ours.sigma == theirs.sigma
    np.testing.assert_array_equal(ours.mean, theirs.mean)
    assert ours.best.round == theirs.best.round and ours.best.loss == theirs.best.loss
    np.testing.assert_array_equal(ours.best.mean, theirs.best.mean)
    assert [r["loss"] for r in flower["rounds"]] == [r["loss"] for r in simulated["rounds"]]


def test_federated_evaluation_scores_what_the_simulator_scores(runs):
    flower, simulated, _ = runs
    assert flower["accuracies"] == simulated["accuracies"]
    for key in ("zero_shot", "zero_shot_calibrated", "final_accuracy", "best_round"):
        assert flower[key] == simulated[key]
    assert flower["eval_size"] == simulated["eval_size"] == 30


def test_the_run_writes_a_prompt_file_and_measures_its_messages(runs):
    flower, _, out = runs
    prompt = LearnedPrompt.load(out.with_suffix(".prompt.json"))
    assert prompt.round == flower["best_round"] and prompt.start == flower["start"]
    assert LearnedPrompt.load(out).round == prompt.round  # the results file is a prompt file too
    searched = [record for record in flower["rounds"] if record["kind"] == "search"]
    assert searched and all(min(record["bytes_per_party"].values()) > 16 * 2 for record in searched)


def test_a_node_on_another_model_is_refused_before_any_round(tiny_model_dir, tmp_path):
    """The spec is pinned to a model the nodes do not load: every node fails the handshake, no round is played."""
    pinned = pin(small_spec(str(tiny_model_dir)), load_backend(str(tiny_model_dir)))
    spec = replace(pinned, model={"identity": "llama-64-0123456789ab"})
    out = tmp_path / "refused.json"
    with pytest.raises(Exception, match="cannot take part"):  # the timeout only bounds a node slowed by load
        flower_run(RunSettings(spec, out=out, connect_timeout_s=600))
    assert not out.exists()


def test_reports_cross_flower_messages_unchanged():
    update = Update("party-1", 2, 0.5, on_wire(np.linspace(-1, 1, 16), "float16"), (0.5, 0.4), 0.3, 0.45, 6, 8, 1.5)
    scores = Scores("party-1", 0, (0.7, 0.6), 6, 0.2)
    spec = small_spec("tiny")
    for report in (update, scores):
        back = flower.report_of(spec, "party-1", flower.report_content(spec, report))
        assert type(back) is type(report) and repr(back) == repr(report)
    content = flower.report_content(spec, update)
    del content["prompt"]
    with pytest.raises(InvalidUpdate, match="needs its mean"):
        flower.report_of(spec, "party-1", content)


def test_a_round_crosses_as_the_party_state_it_was():
    spec = small_spec("tiny")
    state = GlobalState(2, on_wire(np.arange(16) / 10, "float16"), 0.3, "vocabulary", 1)
    back = flower.state_of(flower.round_content(spec, state))
    assert (back.round, back.sigma, back.start, back.mean_round) == (2, 0.3, "vocabulary", 1)
    np.testing.assert_array_equal(back.mean, state.mean)
    assert back.candidates == ()


def test_a_rank_round_crosses_with_its_candidate_means():
    spec = replace(small_spec("tiny"), federation={"robust": "cross"})
    means = tuple(on_wire(np.full(16, value), "float16") for value in (0.5, -1.25))
    state = GlobalState(2, np.zeros(16), 0.3, "vocabulary", 0, candidates=means)
    back = flower.state_of(flower.round_content(spec, state))
    assert dict(flower.round_content(spec, state)["round"])["kind"] == "rank"
    assert len(back.candidates) == 2 and all(np.array_equal(a, b) for a, b in zip(back.candidates, means, strict=True))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "needs partition-id and num-partitions"),
        ({"partition-id": 0, "num-partitions": 3, "engine": "onnx"}, "engine must be one of"),
    ],
)
def test_a_node_config_without_its_party_is_refused_in_one_line(config, message):
    with pytest.raises(UserError, match=message):
        NodeSettings.from_node_config(config)


def test_the_apps_run_config_defaults_are_the_job_specs_defaults(tmp_path):
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert RunSettings.from_run_config(config) == RunSettings(JobSpec())
    (tmp_path / "run.toml").write_text("seed = 7\n[federation]\nparties = 4\n")
    settings = RunSettings.from_run_config(config | {"config": str(tmp_path / "run.toml"), "out": "/tmp/x.json"})
    assert settings.spec.seed == 7 and settings.spec.federation.parties == 4 and settings.out == Path("/tmp/x.json")


def test_the_library_imports_without_flower():
    """The ``flower`` extra is optional: with flwr missing, the core and the other entry points still import."""
    check = "import sys; sys.modules['flwr'] = None; import fedbpt.simulate, fedbpt.compare, clients.cli, server.app"
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_deployment_engine_runs_a_job_with_an_edge_node_that_imports_no_torch(tmp_path):
    """scripts/flower.sh on the Deployment Engine: a SuperLink and three SuperNode processes on 127.0.0.1 (the
    last on llama.cpp with a q8_0 file), then `flwr run` against them, on the tiny GGUF model."""
    full = write_tiny_gguf(tmp_path / "tiny.gguf")
    quantized = tmp_path / "tiny.q8_0.gguf"
    quantize(full, quantized, "q8_0")
    spec = tmp_path / "run.toml"
    spec.write_text(to_toml(replace(small_spec(str(full)), federation={"rounds": 1})))
    out = tmp_path / "deployment.json"
    env = os.environ | {"FLWR_HOME": str(tmp_path / "flwr"), "FEDBPT_CACHE": str(tmp_path / "cache")}
    command = ["bash", "scripts/flower.sh", "deployment", str(spec), str(out), str(quantized)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "is party-2 (llama.cpp" in result.stdout and "no torch)" in result.stdout
    assert result.stdout.count("torch loaded)") == 2
    results = json.loads(out.read_text())
    assert results["status"] == "finished" and [r["kind"] for r in results["rounds"]] == ["start", "search", "final"]
    assert LearnedPrompt.load(out.with_suffix(".prompt.json")).round == results["best_round"]

"""The HTTP client against a real server process: a whole job (start round, search rounds, final round) run by
tiny-model client processes that ride out a server SIGKILL and end where the simulator ends; a party's data is
the simulator's; model, projection and shard checks come before any work; TLS with a self-signed certificate."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from conftest import tiny_backend
from serving import ADMIN_TOKEN, ROOT, ServerProcess, admin_headers, start_tls_server
from typer.testing import CliRunner

from clients.api import Api, ServerUnavailable
from clients.party import DataChoice, party_examples
from fedbpt.errors import UserError
from fedbpt.federation import prepare
from fedbpt.job import JobMismatch, LearnedPrompt, pin, prompted_model
from fedbpt.models import load_backend
from fedbpt.protocol import decode_vector
from fedbpt.simulate import simulate
from fedbpt.spec import JobSpec, from_dict, replace, to_dict


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    backend = tiny_backend()
    backend.model.save_pretrained(folder)
    backend.tokenizer.save_pretrained(folder)
    return folder


def small_spec(model: str = "tiny", **sections) -> JobSpec:
    """Three parties of 6 SST-2 sentences, two candidate starts, two short search rounds."""
    spec = from_dict(
        {
            "model": {"name": model},
            "prompt": {"dim": 16, "n_tokens": 3, "starts": ["preamble", "vocabulary"]},
            "search": {"population": 4, "iterations": 2, "step": 0.5},
            "federation": {"parties": 3, "rounds": 2},
            "data": {"examples_per_party": 6, "eval_examples": 30},
        }
    )
    return replace(spec, **sections)


def job_spec(model_dir, **sections) -> JobSpec:
    """``small_spec`` pinned to the tiny model, as ``fedbpt job create`` pins it."""
    return pin(small_spec(str(model_dir), **sections), load_backend(str(model_dir), dtype="float32", threads=1))


def start_client(server: ServerProcess, token: str, shard: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "clients.cli", "client", "--server", server.url, "--token", token]
    options = ["--dtype", "float32", "--shard", str(shard), "--threads", "1"]
    return subprocess.Popen([*command, *options], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for_reports(server: ServerProcess, job: str, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{server.url}/v1/jobs/{job}", headers=admin_headers()).json()["reports_this_round"] >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{count} reports not in after {timeout} s")


def test_three_client_processes_finish_a_job_across_a_server_kill_where_the_simulator_ends(tmp_path, tiny_model_dir):
    """Two parties report the start round and long-poll for round 1, which cannot open before the third party
    joins; the server is killed under their long-polls and restarted, and then the third party starts. The job's
    rounds and its prompt are then those of ``fedbpt simulate`` on the same spec."""
    spec = job_spec(tiny_model_dir)
    server = ServerProcess(tmp_path / "server.db").start()
    try:
        admin = Api(server.url, ADMIN_TOKEN)
        job = admin.create_job(to_dict(spec))["id"]
        tokens = [admin.add_party(job, f"party-{i}")["token"] for i in range(3)]
        clients = [start_client(server, token, shard) for shard, token in enumerate(tokens[:2])]
        wait_for_reports(server, job, 2)
        server.kill()
        time.sleep(1.0)
        server.start()
        clients.append(start_client(server, tokens[2], 2))
        outputs = [client.communicate(timeout=240)[0].decode() for client in clients]
        for client, output in zip(clients, outputs, strict=True):
            assert client.returncode == 0, output
            assert "round 0 (start): start losses" in output and "finished after round 3" in output
        assert all("retrying" in output for output in outputs[:2])  # they rode out the restart
        history = admin.history(job)
        prompt = LearnedPrompt.from_dict(admin.prompt(job))
    finally:
        server.stop()
    assert history["status"] == "finished"
    kinds = [(r["round"], r["kind"]) for r in history["rounds"]]
    # A final round scores the last prompt, unless the last search round backtracked to the best already scored.
    assert kinds[:3] == [(0, "start"), (1, "search"), (2, "search")] and kinds[3:] in ([], [(3, "final")])
    assert all(r["parties"] == ["party-0", "party-1", "party-2"] for r in history["rounds"])
    assert history["accuracy"][0]["round"] == 0 and all(entry["parties"] == 3 for entry in history["accuracy"])

    simulated = simulate(spec, load_backend(str(tiny_model_dir), dtype="float32", threads=1))
    assert kinds == [(r["round"], r["kind"]) for r in simulated["rounds"]]
    assert [r["loss"] for r in history["rounds"]] == pytest.approx([r["loss"] for r in simulated["rounds"]])
    assert (prompt.start, prompt.round) == (simulated["prompt"]["start"], simulated["prompt"]["round"])
    assert np.array_equal(prompt.z, decode_vector(simulated["prompt"]["z"]))


def test_a_cross_ranked_job_run_by_client_processes_ends_where_the_simulator_ends(tmp_path, tiny_model_dir):
    """Under robust 'cross' the server sends each rank round the search round's means (from its store) and the
    three client processes score them; the job's rounds and prompt are the simulator's."""
    spec = job_spec(tiny_model_dir, federation={"robust": "cross"})
    server = ServerProcess(tmp_path / "server.db").start()
    try:
        admin = Api(server.url, ADMIN_TOKEN)
        job = admin.create_job(to_dict(spec))["id"]
        tokens = [admin.add_party(job, f"party-{i}")["token"] for i in range(3)]
        clients = [start_client(server, token, shard) for shard, token in enumerate(tokens)]
        outputs = [client.communicate(timeout=240)[0].decode() for client in clients]
        for client, output in zip(clients, outputs, strict=True):
            assert client.returncode == 0, output
            assert "round 2 (rank): scored 3 means" in output
        history = admin.history(job)
        prompt = LearnedPrompt.from_dict(admin.prompt(job))
    finally:
        server.stop()
    simulated = simulate(spec, load_backend(str(tiny_model_dir), dtype="float32", threads=1))
    kinds = [(r["round"], r["kind"]) for r in history["rounds"]]
    assert (2, "rank") in kinds and kinds == [(r["round"], r["kind"]) for r in simulated["rounds"]]
    served = [r["cross_losses"] for r in history["rounds"] if r["kind"] == "rank"]
    assert served == [pytest.approx(r["cross_losses"]) for r in simulated["rounds"] if r["kind"] == "rank"]
    assert (prompt.start, prompt.round) == (simulated["prompt"]["start"], simulated["prompt"]["round"])
    assert np.array_equal(prompt.z, decode_vector(simulated["prompt"]["z"]))


def test_a_shard_holds_what_the_simulators_party_holds(backend):
    spec = small_spec()
    federation = prepare(spec, backend)
    model = federation.model
    for shard, party in enumerate(federation.parties):
        train, held_out = party_examples(spec, DataChoice(shard=shard))
        assert [example.ids for example in model.encode(train)] == [example.ids for example in party.examples]
        assert [example.label for example in train] == party.labels.tolist()
        assert len(held_out) == 10  # every third of the job's 30 held-out rows
    whole, held_out = party_examples(spec, DataChoice(eval_examples=0))
    assert len(whole) == len(model.task.load_train()) and len(held_out) == len(model.task.load_eval())


def test_a_party_with_another_model_a_changed_projection_or_a_wrong_shard_is_refused(tiny_model_dir):
    spec = job_spec(tiny_model_dir)
    other = tiny_backend(seed=1)
    other.identity = "another-model"
    with pytest.raises(JobMismatch, match="uses model"):
        prompted_model(spec, other)
    with pytest.raises(JobMismatch, match="fingerprint"):
        prompted_model(replace(spec, prompt={"fingerprint": "0" * 16}), load_backend(str(tiny_model_dir), "float32"))
    with pytest.raises(UserError, match=r"--shard must be in \[0, 3\) for this job's 3 parties, got 3"):
        party_examples(spec, DataChoice(shard=3))


TASK_FILE = """
name = "reviews"
template = "Review: {text}\\nSentiment:"
train = "train.csv"
eval = "dev.csv"
text_column = "sentence"
label_column = "label"
[labels]
"0" = " negative"
"1" = " positive"
"""


def test_job_create_pins_the_model_sends_the_task_file_and_issues_a_token_per_party(tmp_path, tiny_model_dir):
    from clients.cli import app

    task = tmp_path / "reviews.toml"
    task.write_text(TASK_FILE)
    server = ServerProcess(tmp_path / "server.db").start()
    try:
        tokens = tmp_path / "tokens.json"
        arguments = ["job", "create", "--model", str(tiny_model_dir), "--task", str(task), "--dim", "16"]
        arguments += ["--n-tokens", "3", "--parties", "2", "--rounds", "1", "--tokens-out", str(tokens)]
        environment = {"FEDBPT_SERVER": server.url, "FEDBPT_ADMIN_TOKEN": ADMIN_TOKEN}
        result = CliRunner().invoke(app, arguments, env=environment)
        assert result.exit_code == 0, result.output
        assert "1 search rounds and a final scoring round; 2 parties, 2 per round" in result.output
        written = json.loads(tokens.read_text())
        assert sorted(written["tokens"]) == ["party-0", "party-1"] and tokens.stat().st_mode & 0o777 == 0o600
        spec = from_dict(Api(server.url, ADMIN_TOKEN).job(written["job"])["spec"])
        assert spec.pinned and spec.task["name"] == "reviews" and spec.model.name == str(tiny_model_dir)
        missing = CliRunner().invoke(app, [*arguments[:4], "--task", str(tmp_path / "nope.toml")], env=environment)
        assert missing.exit_code == 2 and "nope.toml does not exist" in missing.output
    finally:
        server.stop()


def test_client_verifies_tls_with_a_ca_bundle(tmp_path):
    server, ca = start_tls_server(tmp_path)
    try:
        assert server.url.startswith("https://")
        assert Api(server.url, ADMIN_TOKEN, ca_bundle=str(ca)).request("GET", "/v1/jobs") == []
        with pytest.raises(ServerUnavailable, match="--ca-bundle"):
            Api(server.url, ADMIN_TOKEN).request("GET", "/v1/jobs")
    finally:
        server.stop()


def test_a_killed_client_leaves_the_round_to_close_at_its_deadline(tmp_path, tiny_model_dir):
    server = ServerProcess(tmp_path / "server.db").start()
    clients = []
    try:
        admin = Api(server.url, ADMIN_TOKEN)
        sections = {"prompt": {"starts": ["preamble"]}, "federation": {"rounds": 1, "quorum": 2, "deadline_s": 3.0}}
        job = admin.create_job(to_dict(job_spec(tiny_model_dir, **sections)))["id"]
        tokens = [admin.add_party(job, f"party-{i}")["token"] for i in range(3)]
        clients = [start_client(server, token, shard) for shard, token in enumerate(tokens)]
        for line in clients[2].stdout:  # it has joined and loaded its model and data, and not yet reported
            if b"training examples" in line:
                break
        clients[2].kill()
        for client in clients[:2]:
            output = client.communicate(timeout=240)[0].decode()
            assert client.returncode == 0, output
        assert admin.job(job)["status"] == "finished"
        records = admin.history(job)["rounds"]
        assert [(record["round"], record["kind"]) for record in records] == [(1, "search"), (2, "final")]
        for record in records:
            assert record["reason"] == "deadline" and record["parties"] == ["party-0", "party-1"]
    finally:
        for client in clients:
            client.kill()
        server.stop()

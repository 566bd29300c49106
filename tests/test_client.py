"""The HTTP client against a real server process: a full job with tiny-model client processes that ride
out a server SIGKILL, fingerprint checks before any work, and TLS with a self-signed certificate."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time

import httpx
import pytest
import trustme
from conftest import tiny_backend
from serving import ADMIN_TOKEN, ROOT, ServerProcess, admin_headers

from clients.api import Api, ServerUnavailable
from fedbpt.job import JobMismatch, make_spec, prompted_model
from fedbpt.models import load_backend
from fedbpt.search import SearchConfig


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    backend = tiny_backend()
    backend.model.save_pretrained(folder)
    backend.tokenizer.save_pretrained(folder)
    return folder


def job_spec(model_dir, **options) -> dict:
    backend = load_backend(str(model_dir), dtype="float32")
    search = SearchConfig(population=4, iterations=2, perturb_rate=0.5)
    return make_spec(backend, str(model_dir), "sst2", search=search, dim=16, n_tokens=3, **options)


def start_client(server: ServerProcess, token: str, model_dir, shard: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "fedbpt.cli", "client", "--server", server.url, "--token", token]
    options = ["--model", str(model_dir), "--dtype", "float32", "--shard", str(shard), "--shards", "3"]
    options += ["--examples-per-party", "6", "--eval-examples", "30", "--threads", "1"]
    return subprocess.Popen([*command, *options], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for_updates(server: ServerProcess, job: str, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{server.url}/v1/jobs/{job}", headers=admin_headers()).json()["updates_this_round"] >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{count} updates not in after {timeout} s")


def test_three_client_processes_finish_a_job_across_a_server_kill(tmp_path, tiny_model_dir):
    """Two parties submit round 1 and long-poll for round 2, which cannot open before the third party
    joins; the server is killed under their long-polls and restarted, and then the third party starts."""
    server = ServerProcess(tmp_path / "server.db").start()
    try:
        admin = Api(server.url, ADMIN_TOKEN)
        job = admin.create_job(job_spec(tiny_model_dir, rounds=3, parties_per_round=3))["id"]
        tokens = [admin.add_party(job, f"party-{i}")["token"] for i in range(3)]
        clients = [start_client(server, token, tiny_model_dir, shard) for shard, token in enumerate(tokens[:2])]
        wait_for_updates(server, job, 2)
        server.kill()
        time.sleep(1.0)
        server.start()
        clients.append(start_client(server, tokens[2], tiny_model_dir, 2))
        outputs = [client.communicate(timeout=240)[0].decode() for client in clients]
        for client, output in zip(clients, outputs, strict=True):
            assert client.returncode == 0, output
            assert "finished after round 3" in output
        assert all("retrying" in output for output in outputs[:2])  # they rode out the restart
        history = admin.history(job)
        assert history["status"] == "finished" and len(history["rounds"]) == 3
        assert all(sorted(r["parties"]) == ["party-0", "party-1", "party-2"] for r in history["rounds"])
        assert history["initial_accuracy"] is not None and history["rounds"][-1]["evaluated_by"] == 3
        assert admin.prompt(job)["round"] == 3
    finally:
        server.stop()


def test_a_party_with_another_model_is_refused_before_any_work(tmp_path, tiny_model_dir):
    spec = job_spec(tiny_model_dir)
    other = tiny_backend(seed=1)
    other.identity = "another-model"
    with pytest.raises(JobMismatch, match="uses model"):
        prompted_model(spec, other)
    spec["projection"]["fingerprint"] = "0" * 16
    with pytest.raises(JobMismatch, match="fingerprint"):
        prompted_model(spec, load_backend(str(tiny_model_dir), dtype="float32"))


def test_client_verifies_tls_with_a_ca_bundle(tmp_path):
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    key, chain, ca = tmp_path / "key.pem", tmp_path / "cert.pem", tmp_path / "ca.pem"
    certificate.private_key_pem.write_to_path(key)
    certificate.cert_chain_pems[0].write_to_path(chain)
    authority.cert_pem.write_to_path(ca)
    server = ServerProcess(tmp_path / "server.db", uvicorn_args=(f"--ssl-keyfile={key}", f"--ssl-certfile={chain}"))
    server.start(verify=ssl.create_default_context(cafile=str(ca)))
    try:
        assert server.url.startswith("https://")
        assert Api(server.url, ADMIN_TOKEN, ca_bundle=str(ca)).request("GET", "/v1/jobs") == []
        with pytest.raises(ServerUnavailable, match="--ca-bundle"):
            Api(server.url, ADMIN_TOKEN).request("GET", "/v1/jobs")
    finally:
        server.stop()


def test_a_killed_client_leaves_the_round_to_close_at_its_deadline(tmp_path, tiny_model_dir):
    server = ServerProcess(tmp_path / "server.db").start()
    try:
        admin = Api(server.url, ADMIN_TOKEN)
        spec = job_spec(tiny_model_dir, rounds=2, parties_per_round=3, quorum=2, round_deadline_s=3.0)
        job = admin.create_job(spec)["id"]
        tokens = [admin.add_party(job, f"party-{i}")["token"] for i in range(3)]
        clients = [start_client(server, token, tiny_model_dir, shard) for shard, token in enumerate(tokens)]
        for line in clients[2].stdout:  # it has joined and loaded its model and data, and not yet submitted
            if b"training examples" in line:
                break
        clients[2].kill()
        for client in clients[:2]:
            output = client.communicate(timeout=240)[0].decode()
            assert client.returncode == 0, output
        assert admin.job(job)["status"] == "finished"
        for record in admin.history(job)["rounds"]:
            assert record["reason"] == "deadline" and sorted(record["parties"]) == ["party-0", "party-1"]
    finally:
        for client in clients:
            client.kill()
        server.stop()

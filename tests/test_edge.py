"""The edge client process (llama.cpp, no torch) trains in a real server job next to transformers clients."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from serving import ADMIN_TOKEN, ROOT, ServerProcess, start_tls_server
from tiny_gguf import write_tiny_gguf

from clients.api import Api
from fedbpt.backends.llama import quantize
from fedbpt.job import pin
from fedbpt.models import load_backend
from fedbpt.spec import from_dict, to_dict


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edge")
    full = write_tiny_gguf(folder / "tiny.gguf")
    quantized = folder / "tiny.q8_0.gguf"
    quantize(full, quantized, "q8_0")
    return full, quantized


def client_command(kind: str, server: ServerProcess, token: str, model, shard: int) -> list[str]:
    """The same options for both clients: the edge client's are ``fedbpt client``'s."""
    options = ["--server", server.url, "--token", token, "--model", str(model), "--shard", str(shard)]
    options += ["--eval-examples", "30", "--threads", "1"]
    if kind == "edge":  # -X importtime lists every module the process imports
        return [sys.executable, "-X", "importtime", "-m", "clients.edge", *options]
    return [sys.executable, "-m", "clients.cli", "client", "--dtype", "float32", *options]


def imported_modules(importtime_output: str) -> set[str]:
    return {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in importtime_output.splitlines()
        if line.startswith("import time:")
    }


def test_an_edge_client_trains_with_transformers_clients_and_imports_no_torch(tmp_path, tiny_files, monkeypatch):
    full, quantized = tiny_files
    monkeypatch.setenv("FEDBPT_CACHE", str(tmp_path / "cache"))
    reference = load_backend(str(full), dtype="float32")  # also makes the transformers copy the clients share
    spec = from_dict(
        {
            "model": {"name": str(full)},
            "prompt": {"dim": 16, "n_tokens": 3, "starts": ["preamble", "vocabulary"]},
            "search": {"population": 4, "iterations": 2, "step": 0.5},
            "federation": {"parties": 3, "rounds": 1},
            "data": {"examples_per_party": 6},
        }
    )
    spec = pin(spec, reference)
    server = ServerProcess(tmp_path / "server.db").start()
    clients = []
    try:
        admin = Api(server.url, ADMIN_TOKEN)
        job = admin.create_job(to_dict(spec))["id"]
        tokens = [admin.add_party(job, f"party-{i}")["token"] for i in range(3)]
        kinds = [("transformers", full), ("transformers", full), ("edge", quantized)]
        logs = [(tmp_path / f"client-{shard}.out", tmp_path / f"client-{shard}.err") for shard in range(3)]
        for shard, ((kind, model), token) in enumerate(zip(kinds, tokens, strict=True)):
            command = client_command(kind, server, token, model, shard)
            out, err = (path.open("w") for path in logs[shard])  # files, not pipes: -X importtime fills a pipe
            clients.append(subprocess.Popen(command, cwd=ROOT, env=os.environ, stdout=out, stderr=err))
        for client in clients:
            client.wait(timeout=300)
        results = [(out.read_text(), err.read_text()) for out, err in logs]
        for client, (out, err) in zip(clients, results, strict=True):
            assert client.returncode == 0, err[-3000:]
            assert "finished after round 2" in out  # the start round, a search round, the final round
        edge_modules = imported_modules(results[2][1])
        assert {"llama_cpp", "numpy", "cma", "httpx"} <= edge_modules
        assert not edge_modules & {"torch", "transformers", "accelerate", "safetensors"}
        history = admin.history(job)
        assert history["status"] == "finished"
        assert [record["kind"] for record in history["rounds"]] == ["start", "search", "final"]
        assert all(record["parties"] == ["party-0", "party-1", "party-2"] for record in history["rounds"])
        assert all(entry["parties"] == 3 for entry in history["accuracy"])
    finally:
        for client in clients:
            client.kill()
        server.stop()


def test_the_edge_client_does_not_load_matplotlib_through_cma():
    """cma imports matplotlib.pyplot whenever it is installed (about 45 MB); the edge client never plots."""
    check = "import sys, clients.edge, cma; assert 'matplotlib' in sys.modules; print(sys.modules['matplotlib'])"
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "None"


def edge_errors(*options: str) -> tuple[int, str]:
    """Run the edge client as a user would, without the server and token variables; (exit code, stderr)."""
    env = {name: value for name, value in os.environ.items() if name not in ("FEDBPT_SERVER", "FEDBPT_TOKEN")}
    command = [sys.executable, "-m", "clients.edge", *options]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return result.returncode, result.stderr


@pytest.mark.parametrize(
    "options, first_line",
    [
        ((), "error: pass --server (or set FEDBPT_SERVER)"),
        (("--server", "http://127.0.0.1:9"), "error: pass --token (or FEDBPT_TOKEN) or --enroll"),
        (
            ("--server", "http://127.0.0.1:9", "--quant", "q5"),
            "error: --quant must be one of f16, q8_0, q4_0, got 'q5'",
        ),
        (
            ("--server", "http://127.0.0.1:9", "--token", "t", "--retry-for", "0"),
            "error: server at http://127.0.0.1:9 unavailable for 0 s: check the URL and that the server runs "
            "(--retry-for waits longer)",
        ),
    ],
)
def test_a_mistake_in_the_edge_options_is_one_line_and_exit_code_2(options, first_line):
    code, stderr = edge_errors(*options)
    assert code == 2 and "Traceback" not in stderr
    assert stderr.splitlines() == [first_line]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """A real server behind TLS, and the CA file that verifies its certificate."""
    server, ca = start_tls_server(tmp_path_factory.mktemp("tls"))
    yield server, ca
    server.stop()


def test_a_refused_token_is_one_line_and_exit_code_2(tls_server):
    server, ca = tls_server
    code, stderr = edge_errors("--server", server.url, "--token", "wrong", "--ca-bundle", str(ca))
    assert code == 2 and "Traceback" not in stderr
    assert stderr.splitlines() == ["error: unknown token; ask the administrator for a party token (HTTP 401 bad_token)"]


def test_a_server_the_client_cannot_verify_is_one_line_and_exit_code_2(tls_server):
    """Unverifiable is unreachable without retries (a server that is not listening is retried for 10 minutes)."""
    server, _ = tls_server
    code, stderr = edge_errors("--server", server.url, "--token", "wrong")
    assert code == 2 and "Traceback" not in stderr
    [line] = stderr.splitlines()
    assert line.startswith("error: cannot verify the server's TLS certificate (")
    assert line.endswith("); pass its CA with --ca-bundle")

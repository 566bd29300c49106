"""The edge client process (llama.cpp, no torch) trains in a real server job next to transformers clients."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from serving import ADMIN_TOKEN, ROOT, ServerProcess
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
        for shard, ((kind, model), token) in enumerate(zip(kinds, tokens, strict=True)):
            command = client_command(kind, server, token, model, shard)
            clients.append(
                subprocess.Popen(command, cwd=ROOT, env=os.environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            )
        results = [client.communicate(timeout=300) for client in clients]
        for client, (out, err) in zip(clients, results, strict=True):
            assert client.returncode == 0, err.decode()[-3000:]
            assert "finished after round 2" in out.decode()  # the start round, a search round, the final round
        edge_modules = imported_modules(results[2][1].decode())
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

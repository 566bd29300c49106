"""A real server process for tests: uvicorn on a free 127.0.0.1 port with its own database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ADMIN_TOKEN = "test-admin-token-0123456789"
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``uvicorn server.app:app`` in a subprocess; ``kill()`` sends SIGKILL, ``start()`` restarts it."""

    def __init__(self, database: Path, env: dict | None = None, uvicorn_args: tuple[str, ...] = ()):
        self.database, self.port = database, free_port()
        self.env = {**os.environ, "FEDBPT_ADMIN_TOKEN": ADMIN_TOKEN, "FEDBPT_DB": str(database), **(env or {})}
        self.uvicorn_args = uvicorn_args
        self.scheme = "https" if any(arg.startswith("--ssl-certfile") for arg in uvicorn_args) else "http"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, verify: object = True) -> ServerProcess:
        command = [sys.executable, "-m", "uvicorn", "server.app:app", "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "--log-level", "warning", *self.uvicorn_args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stderr.read().decode()}")
            try:
                if httpx.get(f"{self.url}/readyz", verify=verify, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not become ready in 30 s")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def admin_headers() -> dict:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def tiny_spec(**overrides) -> dict:
    """A valid job spec without a model (for tests that send synthetic updates)."""
    spec = {
        "name": "test",
        "task": "sst2",
        "model": {"name": "tiny", "identity": "tiny", "hidden_size": 32},
        "projection": {"seed": 1, "dim": 8, "n_tokens": 2, "scale": 0.01, "fingerprint": "0123456789abcdef"},
        "search": {"population": 4, "iterations": 2, "loss": "ce", "perturb_rate": 0.0},
        "rounds": 3,
        "parties_per_round": 2,
        "quorum": 2,
        "round_deadline_s": 600,
    }
    spec.update(overrides)
    return spec

"""A real server process for tests: uvicorn on a free 127.0.0.1 port with its own database."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import trustme

from clients.local import free_port
from fedbpt.spec import from_dict, replace, to_dict

ADMIN_TOKEN = "test-admin-token-0123456789"
ROOT = Path(__file__).resolve().parents[1]
FEDBPT = str(Path(sys.executable).with_name("fedbpt"))  # the console script beside this Python, on PATH or not


class ServerProcess:
    """``uvicorn server.app:app`` in a subprocess; ``kill()`` sends SIGKILL, ``start()`` restarts it."""

    def __init__(self, database: Path, env: dict | None = None, uvicorn_args: tuple[str, ...] = ()):
        self.database, self.port = database, free_port()
        self.env = {**os.environ, "FEDBPT_ADMIN_TOKEN": ADMIN_TOKEN, "FEDBPT_DB": str(database), **(env or {})}
        self.uvicorn_args = uvicorn_args
        self.scheme = "https" if any(arg.startswith("--ssl-certfile") for arg in uvicorn_args) else "http"
        self.process: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        """The server's stderr: uvicorn's lines and the coordinator's structured ones."""
        return self.database.with_suffix(".log")

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
            stderr=self.log.open("a"),  # a file, not a pipe: a full pipe would block the server
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
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


def start_tls_server(folder: Path) -> tuple[ServerProcess, Path]:
    """A server behind TLS with a certificate from a fresh test CA, started; and the CA file that verifies it."""
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    key, chain, ca = folder / "key.pem", folder / "cert.pem", folder / "ca.pem"
    certificate.private_key_pem.write_to_path(key)
    certificate.cert_chain_pems[0].write_to_path(chain)
    authority.cert_pem.write_to_path(ca)
    server = ServerProcess(folder / "server.db", uvicorn_args=(f"--ssl-keyfile={key}", f"--ssl-certfile={chain}"))
    return server.start(verify=ssl.create_default_context(cafile=str(ca))), ca


def admin_headers() -> dict:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def tiny_spec(**sections) -> dict:
    """A valid, pinned job spec without a model (for tests that send synthetic reports): one starting prompt (so
    the job opens at search round 1), 3 search rounds, 2 parties. ``sections`` change settings as
    ``fedbpt.spec.replace`` does: ``tiny_spec(federation={"rounds": 1})``."""
    spec = from_dict(
        {
            "name": "test",
            "model": {"name": "tiny", "identity": "tiny", "hidden_size": 32},
            "prompt": {
                "dim": 8,
                "n_tokens": 2,
                "starts": ["preamble"],
                "scale": 0.01,
                "fingerprint": "0123456789abcdef",
            },
            "search": {"population": 4, "iterations": 2, "perturb_rate": 0.0, "step": 0.5, "step_floor": 0.05},
            "federation": {"parties": 2, "rounds": 3},
        }
    )
    return to_dict(replace(spec, **sections))

"""``fedbpt local``: a whole federation on this machine in one command, like NVFlare's POC mode.

A uvicorn server on a free 127.0.0.1 port, the job created from the spec, and one ``fedbpt client`` process per
party (party i holds shard i of the spec's seeded split), their output streamed with the party's name in front;
then the job's rounds and its returned prompt. Ctrl-C stops every process. Everything lands in the output
folder: the server's database, log and the job's event log, each party's log, and ``prompt.json``.
"""

from __future__ import annotations

import gc
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import typer

from clients.admin import create_job
from clients.api import Api
from clients.history import history_lines
from fedbpt.errors import UserError
from fedbpt.job import LearnedPrompt, preflight
from fedbpt.models import load_backend
from fedbpt.spec import JobSpec
from fedbpt.tasks import BUILTIN_TASKS

READY_WITHIN_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(out: Path, port: int, admin_token: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "FEDBPT_ADMIN_TOKEN": admin_token,
        "FEDBPT_DB": str(out / "server.db"),
        "FEDBPT_EVENTS_DIR": str(out / "events"),
    }
    command = [sys.executable, "-m", "uvicorn", "server.app:app", "--host", "127.0.0.1", "--port", str(port)]
    options = ["--timeout-keep-alive", "5", "--log-level", "warning"]  # idle connections close after 5 s
    with (out / "server.log").open("w") as log:
        return subprocess.Popen([*command, *options], env=env, stdout=log, stderr=log)


def wait_ready(url: str, server: subprocess.Popen, log: Path) -> None:
    give_up = time.monotonic() + READY_WITHIN_S
    while time.monotonic() < give_up:
        if server.poll() is not None:
            raise UserError(f"the server exited with code {server.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise UserError(f"the server did not answer within {READY_WITHIN_S:.0f} s; see {log}")


def start_party(
    name: str, shard: int, token: str, url: str, options: list[str], log: Path
) -> tuple[subprocess.Popen, threading.Thread]:
    """A ``fedbpt client`` process and a thread that copies its output to ``log`` and, named, to ours."""
    command = [sys.executable, "-m", "clients.cli", "client", "--server", url, "--shard", str(shard), *options]
    party = subprocess.Popen(
        command,
        env={**os.environ, "FEDBPT_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )

    def stream() -> None:
        with log.open("w") as file:
            for line in party.stdout:
                file.write(line)
                file.flush()
                typer.echo(line if line.startswith(f"{name}:") else f"{name}: {line}", nl=False)

    copier = threading.Thread(target=stream, daemon=True)
    copier.start()
    return party, copier


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def run_local(spec: JobSpec, out: Path, dtype: str, threads: int, data_dir: Path | None, linger: float = 0.0) -> int:
    """Run the federation; return the exit code (0 finished, 1 a process failed, 130 interrupted)."""
    if data_dir is None and isinstance(spec.task, str) and spec.task not in BUILTIN_TASKS:
        data_dir = Path(spec.task).parent  # the parties read a task file's data where the file is
    preflight(spec, data_dir=data_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("server.db*"):
        stale.unlink()
    admin_token, port = secrets.token_urlsafe(24), free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(out, port, admin_token)
    processes = [server]
    try:
        wait_ready(url, server, out / "server.log")
        typer.echo(f"server up at {url} (log: {out / 'server.log'}; event log: {out / 'events'})")
        api = Api(url, admin_token, retry_for_s=30)
        backend = load_backend(spec.model.name, dtype=dtype, threads=threads)  # pins the model and projection
        job, tokens = create_job(api, spec, backend)
        del backend
        gc.collect()
        rounds = spec.federation.rounds
        typer.echo(f"job {job['id']}: {len(tokens)} parties, {rounds} search round{'s' * (rounds > 1)}")
        viewer = api.request("POST", "/v1/viewers", json={"name": "local"})
        typer.echo(f"dashboard: {url}/dashboard#{job['id']} (viewer token: {viewer['token']})")
        options = ["--dtype", dtype, "--threads", str(threads)]
        if data_dir is not None:
            options += ["--data-dir", str(data_dir)]
        parties = {}
        for shard, (name, token) in enumerate(tokens.items()):
            parties[name] = start_party(name, shard, token, url, options, out / f"{name}.log")
            processes.append(parties[name][0])
        for name, (party, copier) in parties.items():
            if party.wait() != 0:
                copier.join(5)
                typer.echo(
                    f"error: {name} failed (exit code {party.returncode}); see {out / (name + '.log')}", err=True
                )
                return 1
            copier.join(5)
        typer.echo("\n".join(history_lines(job["id"], api.history(job["id"]))))
        prompt = LearnedPrompt.from_dict(api.prompt(job["id"], "best"), f"the best prompt of job {job['id']}")
        prompt.save(out / "prompt.json")
        typer.echo(
            f"returned prompt written to {out / 'prompt.json'} (score it: fedbpt evaluate --prompt {out}/prompt.json)"
        )
        if linger:
            typer.echo(f"the server and its dashboard stay up for {linger:.0f} s (Ctrl-C stops them)")
            time.sleep(linger)
        return 0
    except KeyboardInterrupt:
        typer.echo(f"interrupted: stopping the server and {len(processes) - 1} parties", err=True)
        return 130
    finally:
        stop(processes)

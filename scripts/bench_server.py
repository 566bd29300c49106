"""Server load benchmark: one ``uvicorn server.app:app`` process and N synthetic parties over several rounds.

    .venv/bin/python scripts/bench_server.py --clients 1000 [--rounds 3] [--think 5] [--port 0] [--keep-db]
        [--dashboard]

The server runs as its own process on a fresh SQLite database in a temporary folder. The job has one
starting prompt (so no start round), ``--rounds`` search rounds and the final scoring round. The parties are
asyncio tasks on one event loop, each with its own httpx.AsyncClient; there is no model: each party sends a
valid random report of the real dimension (an update of 500 numbers, about 1.6 KB as float16; the final
round's single loss). Each follows the loop of clients/party.py with sleeps in place of the model: it joins at
a random time in [0, think) s and fetches the open round; when the round's global prompt is new to it, it
evaluates it (a uniform [0, think) s delay) and reports the accuracy; it answers the round (another uniform
[0, think) s delay) and submits its report, then long-polls for the next round. A round closes when all N
reports are in (parties_per_round = N), so the slowest party sets the pace and all N long-polls wake at once.

Request kinds, timed on the client from sending to the full response (so they include this process's
own event-loop delay, printed as "client loop lag"):
  submit      POST .../rounds/{r}/reports that did not close the round
  close       the one submit per round that closed it: it also closes the round over all N reports
  evaluation  POST .../rounds/{k}/evaluations
  fetch       GET .../round without wait, answered at once
  wake        not a request: from the round closing (server clock) to a long-polling party holding the
              next round; the time a long-poll is held waiting for the round is excluded
  dashboard   with --dashboard: GET /v1/dashboard/jobs/{id} every 2 s, as an open dashboard polls it (not in p99_ms)

Last line: clients=<N> p99_ms=<x> updates_per_s=<y>. p99_ms covers every request answered at once
(submit, close, evaluation, fetch); updates_per_s is accepted reports over the seconds from the start of
the rounds phase to the last round closing, so it is bounded by the think time (--think 0 measures
capacity). Target: N = 1000 with p99 < 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.util
import os
import random
import re
import resource
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np
from _common import wait_until_ready

from clients.local import free_port
from fedbpt.protocol import encode_vector
from fedbpt.spec import from_dict, to_dict

ROOT = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "bench-admin-token-" + "0" * 16
DIM, ITERATIONS = 500, 4
MAX_WAIT_S = 60.0
IMMEDIATE = ("submit", "close", "evaluation", "fetch")
MEANING = {
    "submit": "POST report, send -> response",
    "close": "POST report that closed the round (closes over N)",
    "evaluation": "POST evaluation, send -> response",
    "fetch": "GET round without wait, send -> response",
    "wake": "round closed (server clock) -> party has next round",
    "dashboard": "GET the dashboard's data, send -> response",
}
DASHBOARD_POLL_S = 2.0
BUCKET = re.compile(r"^fedbpt_request_seconds_bucket\{(?P<labels>.*)\} (?P<count>\S+)$")


class Recorder:
    """Latencies (seconds) by kind, transport errors by kind, and when each party learned of each new round."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.learned: dict[int, list[float]] = defaultdict(list)
        self.lag: list[float] = []

    async def send(self, kind: str, client: httpx.AsyncClient, method: str, url: str, **kwargs) -> httpx.Response:
        """One timed request (untimed if ``kind`` is empty); transport errors are counted and retried (3 tries),
        an error status is fatal. A submit that closed its round is filed as "close"."""
        for attempt in range(3):
            started = time.perf_counter()
            try:
                response = await client.request(method, url, **kwargs)
            except httpx.TransportError:
                self.errors[kind] += 1
                if attempt == 2:
                    raise
                await asyncio.sleep(0.1)
                continue
            if response.is_error:
                raise RuntimeError(f"{method} {url} answered {response.status_code}: {response.text}")
            if kind == "submit" and response.json()["round_closed"]:
                kind = "close"
            if kind:
                self.latencies[kind].append(time.perf_counter() - started)
            return response
        raise AssertionError("unreachable")

    async def watch_loop(self, period: float = 0.01) -> None:
        """How late this event loop wakes a 10 ms sleep: the client's own share of every latency."""
        while True:
            started = time.perf_counter()
            await asyncio.sleep(period)
            self.lag.append(time.perf_counter() - started - period)


def skip_sniffio_search() -> None:
    """httpcore runs ``import sniffio`` on every request; where sniffio is not installed, each failed import
    searches sys.path again (a large part of this client's CPU). Recording the miss once makes it cheap."""
    if importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None


def raise_file_limit(clients: int) -> None:
    """Each party holds a connection on both sides; the server process inherits this limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * clients + 256
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def start_server(folder: Path, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "FEDBPT_ADMIN_TOKEN": ADMIN_TOKEN,
        "FEDBPT_DB": str(folder / "bench.db"),
        "FEDBPT_MAX_WAIT_S": str(MAX_WAIT_S),
    }
    command = [sys.executable, "-m", "uvicorn", "server.app:app", "--host", "127.0.0.1", "--port", str(port)]
    log = folder / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "--log-level", "warning"], cwd=ROOT, env=env, stdout=output, stderr=output
        )
    wait_until_ready(f"http://127.0.0.1:{port}", process, log)
    return process


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_wait_seconds(pid: int) -> float:
    """How long the threads of a process were ready to run but waiting for a CPU (other processes had them)."""
    return sum(int(stat.read_text().split()[1]) for stat in Path(f"/proc/{pid}/task").glob("*/schedstat")) / 1e9


def job_spec(clients: int, rounds: int) -> dict:
    """A spec pinned to a model that does not exist (no party loads one here)."""
    spec = from_dict(
        {
            "name": "bench",
            "model": {"name": "synthetic", "identity": "synthetic", "hidden_size": 32},
            "prompt": {"dim": DIM, "starts": ["preamble"], "scale": 0.01, "fingerprint": "0123456789abcdef"},
            "search": {"iterations": ITERATIONS},
            "federation": {"parties": clients, "rounds": rounds, "deadline_s": 3600},
        }
    )
    return to_dict(spec)


async def set_up(client: httpx.AsyncClient, recorder: Recorder, args: argparse.Namespace) -> tuple[str, list[str]]:
    """Create the job and issue one token per party (a few at a time, as an administrator would script it)."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    job = await recorder.send("", client, "POST", "/v1/jobs", json=job_spec(args.clients, args.rounds), headers=admin)
    job_id = job.json()["id"]
    gate = asyncio.Semaphore(8)

    async def issue(index: int) -> str:
        async with gate:
            body = {"name": f"party-{index:05d}"}
            response = await recorder.send("", client, "POST", f"/v1/jobs/{job_id}/parties", json=body, headers=admin)
            return response.json()["token"]

    return job_id, list(await asyncio.gather(*(issue(index) for index in range(args.clients))))


def random_report(rng: np.random.Generator, info: dict) -> dict:
    """A valid report for the round ``info`` describes: an update in a search round, a loss in the final round."""
    n_examples = int(rng.integers(16, 200))
    if info["kind"] != "search":
        return {
            "kind": "scores",
            "round": info["round"],
            "losses": [float(rng.uniform(0.5, 0.7))],
            "n_examples": n_examples,
        }
    return {
        "kind": "search",
        "round": info["round"],
        "loss": float(rng.uniform(0.5, 0.7)),
        "mean": encode_vector(rng.normal(0.0, 0.1, DIM), "float16"),
        "sigmas": [float(s) for s in rng.uniform(0.1, 0.15, ITERATIONS)],
        "sigma": float(rng.uniform(0.1, 0.15)),
        "fitness": float(rng.uniform(0.2, 0.8)),
        "n_examples": n_examples,
    }


def party_client(url: str, tls: ssl.SSLContext) -> httpx.AsyncClient:
    """A party's own client and connection, as on its own machine (one shared pool of N connections costs
    httpcore O(N) work per request). Idle connections are dropped after 4 s, before uvicorn's 5 s keep-alive
    timeout closes them under a request. The TLS context, unused over http, is built once and shared."""
    limits = httpx.Limits(max_connections=1, keepalive_expiry=4.0)
    return httpx.AsyncClient(base_url=url, verify=tls, limits=limits, timeout=httpx.Timeout(MAX_WAIT_S + 60))


class Party:
    """One synthetic party, following the loop of clients/party.py with sleeps in place of the model."""

    def __init__(self, client: httpx.AsyncClient, recorder: Recorder, job_id: str, token: str, think: float, seed: int):
        self.client, self.recorder, self.think = client, recorder, think
        self.headers, self.base = {"Authorization": f"Bearer {token}"}, f"/v1/jobs/{job_id}"
        self.rng, self.pause = np.random.default_rng(seed), random.Random(seed)

    async def send(self, kind: str, method: str, path: str, **kwargs) -> dict:
        response = await self.recorder.send(kind, self.client, method, self.base + path, headers=self.headers, **kwargs)
        return response.json()

    async def run(self) -> None:
        await asyncio.sleep(self.pause.uniform(0, self.think))
        info = await self.send("fetch", "GET", "/round")
        evaluated = set()
        while info["status"] == "running":
            if info["mean_round"] not in evaluated:
                await asyncio.sleep(self.pause.uniform(0, self.think))  # evaluating the global prompt
                report = {"accuracy": float(self.rng.uniform(0.5, 0.9)), "n_examples": int(self.rng.integers(16, 200))}
                await self.send("evaluation", "POST", f"/rounds/{info['mean_round']}/evaluations", json=report)
                evaluated.add(info["mean_round"])
            await asyncio.sleep(self.pause.uniform(0, self.think))  # the local search, or scoring the prompt
            body = random_report(self.rng, info)
            await self.send("submit", "POST", f"/rounds/{info['round']}/reports", json=body)
            info = await self.next_round(info["round"])

    async def next_round(self, after: int) -> dict:
        """Long-poll until the open round passes ``after`` (or the job ends); re-polls if the wait runs out."""
        while True:
            info = await self.send("", "GET", "/round", params={"after": after, "wait": MAX_WAIT_S})
            if info["round"] > after or info["status"] != "running":
                self.recorder.learned[after].append(time.time())
                return info


async def history(client: httpx.AsyncClient, job_id: str) -> dict:
    response = await client.get(f"/v1/jobs/{job_id}/history", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    response.raise_for_status()
    return response.json()


def wake_delays(recorder: Recorder, closed: dict[int, float]) -> list[float]:
    return [max(0.0, at - closed[r]) for r, times in recorder.learned.items() for at in times]


def server_p99_bounds(metrics: str) -> dict[str, str]:
    """Upper bound of the server-side p99 per POST route, from the app's latency histogram buckets."""
    buckets: dict[str, Counter[float]] = defaultdict(Counter)
    for line in metrics.splitlines():
        match = BUCKET.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels["method"] == "POST" and labels["route"].endswith(("/reports", "/evaluations")):
            buckets[labels["route"].rsplit("/", 1)[1]][float(labels["le"])] += float(match["count"])
    bounds = {}
    for route, counts in buckets.items():
        total = counts[float("inf")]
        bound = min(le for le, count in counts.items() if count >= 0.99 * total)
        bounds[route] = f"<= {bound * 1e3:g} ms" if bound != float("inf") else "> largest bucket"
    return bounds


def percentiles_ms(values: list[float]) -> tuple[float, float, float]:
    p50, p99 = np.percentile(values, [50, 99])
    return p50 * 1e3, p99 * 1e3, max(values) * 1e3


def table(recorder: Recorder, wakes: list[float], seconds: float) -> list[str]:
    lines = [f"{'kind':<11}{'count':>7}{'per_s':>8}{'p50_ms':>9}{'p99_ms':>9}{'max_ms':>9}  measures"]
    rows = {kind: recorder.latencies[kind] for kind in IMMEDIATE} | {"wake": wakes}
    rows["dashboard"] = recorder.latencies["dashboard"]
    for kind, values in rows.items():
        if values:
            p50, p99, top = percentiles_ms(values)
            rate = f"{len(values) / seconds:8.1f}" if kind != "wake" else f"{'-':>8}"
            lines.append(f"{kind:<11}{len(values):>7}{rate}{p50:>9.1f}{p99:>9.1f}{top:>9.1f}  {MEANING[kind]}")
    return lines


async def watch_dashboard(client: httpx.AsyncClient, recorder: Recorder, job_id: str, sizes: list[int]) -> None:
    """What an open dashboard asks for: the job's dashboard data, every two seconds."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    while True:
        response = await recorder.send("dashboard", client, "GET", f"/v1/dashboard/jobs/{job_id}", headers=admin)
        sizes.append(len(response.content))
        await asyncio.sleep(DASHBOARD_POLL_S)


async def measure(args: argparse.Namespace, url: str, server: subprocess.Popen) -> dict:
    recorder, tls = Recorder(), ssl.create_default_context()
    async with httpx.AsyncClient(base_url=url, verify=tls, timeout=60) as client:
        started = time.perf_counter()
        job_id, tokens = await set_up(client, recorder, args)
        setup_s = time.perf_counter() - started
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(party_client(url, tls)) for _ in tokens]
            parties = [Party(clients[i], recorder, job_id, token, args.think, i) for i, token in enumerate(tokens)]
            # The parties' clients live until the end: take them out of the garbage collector's sight, and let
            # each request's objects die young, or full collections walk them all (pauses of up to 0.5 s in
            # this process, which a real party, holding one client, never has). The server does the same.
            gc.freeze()
            gc.set_threshold(20_000, 20, 20)
            watcher = asyncio.create_task(recorder.watch_loop())
            sizes: list[int] = []
            if args.dashboard:
                dashboard = asyncio.create_task(watch_dashboard(client, recorder, job_id, sizes))
            server_cpu, client_cpu, started, wall = (
                cpu_seconds(server.pid),
                time.process_time(),
                time.perf_counter(),
                time.time(),
            )
            server_wait, client_wait = cpu_wait_seconds(server.pid), cpu_wait_seconds(os.getpid())
            await asyncio.gather(*(one.run() for one in parties))
            seconds = time.perf_counter() - started
            server_cpu, client_cpu = cpu_seconds(server.pid) - server_cpu, time.process_time() - client_cpu
            server_wait = cpu_wait_seconds(server.pid) - server_wait
            client_wait = cpu_wait_seconds(os.getpid()) - client_wait
            watcher.cancel()
            if args.dashboard:
                dashboard.cancel()
        closed = {record["round"]: record["closed"] for record in (await history(client, job_id))["rounds"]}
        metrics = (await client.get("/metrics")).text
    return {
        "recorder": recorder,
        "setup_s": setup_s,
        "seconds": seconds,
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
        "server_wait": server_wait,
        "client_wait": client_wait,
        "wakes": wake_delays(recorder, closed),
        "server_p99": server_p99_bounds(metrics),
        "rounds_closed": len(closed),
        "rounds_s": max(closed.values()) - wall,
        "dashboard_bytes": max(sizes, default=0),
    }


def report(args: argparse.Namespace, result: dict) -> None:
    recorder, seconds = result["recorder"], result["seconds"]
    print(
        f"{args.clients} parties, {args.rounds} search rounds and the final one, think U(0, {args.think:g}) s, "
        f"dim {DIM}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; setup (job + tokens) {result['setup_s']:.1f} s"
    )
    print("\n".join(table(recorder, result["wakes"], seconds)))
    lag = recorder.lag or [0.0]
    print(
        f"client loop lag (10 ms timer) p50/p99/max: {' / '.join(f'{v:.1f}' for v in percentiles_ms(lag))} ms; "
        f"transport errors retried: {dict(recorder.errors) or 0}"
    )
    print(f"server-side p99 (app histogram, bucket bound): {result['server_p99']}")
    if args.dashboard:
        print(f"dashboard data: up to {result['dashboard_bytes']} bytes per poll")
    print(
        f"rounds phase {seconds:.1f} s ({result['rounds_closed']} rounds closed after {result['rounds_s']:.1f} s); "
        f"CPU: server "
        f"{result['server_cpu']:.1f} s ({100 * result['server_cpu'] / seconds:.0f}% of a core), client "
        f"{result['client_cpu']:.1f} s ({100 * result['client_cpu'] / seconds:.0f}%); waiting for a CPU: server "
        f"{result['server_wait']:.1f} s, client {result['client_wait']:.1f} s"
    )
    immediate = [value for kind in IMMEDIATE for value in recorder.latencies[kind]]
    updates = len(recorder.latencies["submit"]) + len(recorder.latencies["close"])
    p99 = np.percentile(immediate, 99) * 1e3
    print(f"clients={args.clients} p99_ms={p99:.1f} updates_per_s={updates / result['rounds_s']:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="number of synthetic parties")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--think", type=float, default=5.0, help="evaluating and searching each take uniform [0, think) s"
    )
    parser.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    parser.add_argument("--keep-db", action="store_true", help="keep the server's database and log, print where")
    parser.add_argument("--dashboard", action="store_true", help="poll the job's dashboard data as an open page does")
    args = parser.parse_args()
    raise_file_limit(args.clients)
    skip_sniffio_search()
    folder = Path(tempfile.mkdtemp(prefix="fedbpt-bench-"))
    port = args.port or free_port()
    server = start_server(folder, port)
    try:
        result = asyncio.run(measure(args, f"http://127.0.0.1:{port}", server))
    finally:
        stop_server(server)
        if args.keep_db:
            print(f"database and server log kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    report(args, result)


if __name__ == "__main__":
    main()

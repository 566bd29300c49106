"""A server safe to expose: failed authentications rate-limited per address, party tokens revoked for good,
enrollment secrets that expire, stalled bodies cut off, tokens checked before large bodies are read, and a
readiness check that keeps the database's error to the log. Real uvicorn processes, real HTTP, raw sockets where
a client must misbehave."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import Iterator

import httpx
import pytest
from serving import ADMIN_TOKEN, ServerProcess, admin_headers, tiny_spec
from typer.testing import CliRunner

from clients.api import Api

BODY_TIMEOUT_S = 2


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: httpx.Response, status: int, code: str, phrase: str = "") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["status"], error["code"]) == (status, code) and phrase in error["message"], error
    return error


def new_job(client: httpx.Client, parties: tuple[str, ...] = ("a", "b")) -> tuple[str, dict[str, str]]:
    response = client.post("/v1/jobs", json=tiny_spec(), headers=admin_headers())
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    tokens = {}
    for name in parties:
        added = client.post(f"/v1/jobs/{job_id}/parties", json={"name": name}, headers=admin_headers())
        assert added.status_code == 201, added.text
        tokens[name] = added.json()["token"]
    return job_id, tokens


def send_head(server: ServerProcess, method: str, path: str, headers: dict, body_start: bytes = b"") -> socket.socket:
    """A raw connection that has sent the request's head and ``body_start``, and then sends nothing more."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=BODY_TIMEOUT_S + 10)
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{name}: {value}" for name, value in headers.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body_start)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict, dict]:
    """The status, headers and JSON body of the one answer on ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or pytest.fail(f"connection closed after {data!r}")
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in header_lines)}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(status_line.split()[1]), headers, json.loads(body)


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp("exposed") / "fedbpt.db", env={"FEDBPT_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)}
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def restart(server: ServerProcess, **env: str) -> None:
    server.stop()
    server.env.update(env)
    server.start()


# rate limiting of failed authentication


def test_an_address_that_keeps_failing_to_authenticate_gets_429_until_the_window_passes(tmp_path):
    env = {"FEDBPT_AUTH_FAILURES": "4", "FEDBPT_AUTH_WINDOW_S": "3"}
    server = ServerProcess(tmp_path / "fedbpt.db", env=env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            job_id, tokens = new_job(client, parties=("a",))
            for _ in range(30):  # successes never count
                assert client.get("/v1/me", headers=bearer(tokens["a"])).status_code == 200
            failures = [
                client.get("/v1/jobs", headers=bearer("wrong-admin-token-0123456789")),
                client.get("/v1/me", headers=bearer("fbp_not-a-party-token")),
                client.get(f"/v1/jobs/{job_id}/history"),
                client.post("/v1/enroll", json={"secret": "fbe_not-a-secret"}),
            ]
            assert [response.status_code for response in failures] == [401] * 4

            refused = client.get("/v1/jobs", headers=admin_headers())  # a right token is refused too, for now
            assert_error(refused, 429, "too_many_failures", "too many failed authentications from 127.0.0.1")
            assert 1 <= int(refused.headers["Retry-After"]) <= 3
            assert_error(client.get("/v1/me", headers=bearer(tokens["a"])), 429, "too_many_failures")
            assert client.get("/readyz").status_code == 200  # probes stay open

            started = time.monotonic()
            assert [job["id"] for job in Api(server.url, ADMIN_TOKEN, retry_for_s=30).jobs()] == [job_id]
            assert time.monotonic() - started >= 1  # the client waited out Retry-After
            assert client.get("/v1/me", headers=bearer(tokens["a"])).status_code == 200
    finally:
        server.stop()


# revocation of party tokens


def test_a_revoked_token_stops_working_at_once_and_across_a_restart_and_the_party_can_be_readded(tmp_path):
    from clients.cli import app

    server = ServerProcess(tmp_path / "fedbpt.db").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            job_id, tokens = new_job(client)
            assert client.get("/v1/me", headers=bearer(tokens["a"])).status_code == 200
            environment = {"FEDBPT_SERVER": server.url, "FEDBPT_ADMIN_TOKEN": ADMIN_TOKEN}
            result = CliRunner().invoke(app, ["job", "revoke", job_id, "a"], env=environment)
            assert result.exit_code == 0 and f"party a of job {job_id}: token revoked" in result.output, result.output

            for response in (
                client.get("/v1/me", headers=bearer(tokens["a"])),
                client.get(f"/v1/jobs/{job_id}/round", headers=bearer(tokens["a"])),
                client.get(f"/v1/jobs/{job_id}/history", headers=bearer(tokens["a"])),
            ):
                assert_error(response, 401, "revoked_token", "was revoked; ask the administrator for a new one")
            assert client.get("/v1/me", headers=bearer(tokens["b"])).status_code == 200
            again = client.delete(f"/v1/jobs/{job_id}/parties/a/token", headers=admin_headers())
            assert again.status_code == 200 and again.json() == {"job": job_id, "party": "a"}
            nobody = client.delete(f"/v1/jobs/{job_id}/parties/zed/token", headers=admin_headers())
            assert_error(nobody, 404, "unknown_party")
            taken = client.post(f"/v1/jobs/{job_id}/parties", json={"name": "b"}, headers=admin_headers())
            assert_error(taken, 409, "party_exists", "revoke its token first")

        restart(server)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert_error(client.get("/v1/me", headers=bearer(tokens["a"])), 401, "revoked_token")
            readded = client.post(f"/v1/jobs/{job_id}/parties", json={"name": "a"}, headers=admin_headers())
            assert readded.status_code == 201, readded.text
            me = client.get("/v1/me", headers=bearer(readded.json()["token"]))
            assert me.json() == {"job": job_id, "party": "a", "index": 0}
            assert_error(client.get("/v1/me", headers=bearer(tokens["a"])), 401, "revoked_token")
            assert client.get(f"/v1/jobs/{job_id}", headers=admin_headers()).json()["parties"] == ["a", "b"]
    finally:
        server.stop()


# expiry of enrollment secrets


def test_an_enrollment_secret_expires_at_its_stored_time_across_a_restart_and_a_new_one_is_issued(tmp_path):
    server = ServerProcess(tmp_path / "fedbpt.db", env={"FEDBPT_ENROLLMENT_TTL_S": "1"}).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            job_id, _ = new_job(client, parties=())
            issued = client.post(f"/v1/jobs/{job_id}/enrollments", json={"name": "edge"}, headers=admin_headers())
            assert issued.status_code == 201, issued.text
            old = issued.json()
            assert 0 < old["expires"] - time.time() <= 1.5

        restart(server, FEDBPT_ENROLLMENT_TTL_S="3600")  # the stored expiry holds, not today's setting
        time.sleep(max(0.0, old["expires"] - time.time()) + 0.2)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            expired = client.post("/v1/enroll", json={"secret": old["secret"]})
            assert_error(expired, 401, "secret_expired", "has expired; ask the administrator for a new one")

            issued = client.post(f"/v1/jobs/{job_id}/enrollments", json={"name": "edge"}, headers=admin_headers())
            assert issued.status_code == 201, issued.text
            assert issued.json()["expires"] - time.time() > 3500
            redeemed = client.post("/v1/enroll", json={"secret": issued.json()["secret"]})
            assert redeemed.status_code == 201, redeemed.text
            me = client.get("/v1/me", headers=bearer(redeemed.json()["token"]))
            assert me.json() == {"job": job_id, "party": "edge", "index": 0}
    finally:
        server.stop()


# slow clients and large bodies


def test_stalled_bodies_are_answered_408_and_closed_within_the_timeout_while_others_are_served(server, client):
    job_id, tokens = new_job(client)
    headers = {**bearer(tokens["a"]), "Content-Type": "application/json", "Content-Length": "1000"}
    path = f"/v1/jobs/{job_id}/rounds/1/reports"
    started = time.monotonic()
    stalled = [send_head(server, "POST", path, headers, b'{"kind": "search", ') for _ in range(60)]
    for _ in range(5):
        assert client.get("/v1/me", headers=bearer(tokens["b"])).status_code == 200
    assert time.monotonic() - started < BODY_TIMEOUT_S
    for sock in stalled:
        with sock:
            status, answer_headers, body = read_answer(sock)
            assert (status, body["error"]["code"], answer_headers["connection"]) == (408, "body_timeout", "close")
            assert closed_by_server(sock)
    assert time.monotonic() - started < BODY_TIMEOUT_S + 5
    assert client.get(f"/v1/jobs/{job_id}", headers=admin_headers()).json()["reports_this_round"] == 0


def test_a_large_body_with_a_wrong_token_is_refused_before_it_is_sent(server, client):
    job_id, tokens = new_job(client)
    path = f"/v1/jobs/{job_id}/rounds/1/reports"
    large = {"Content-Type": "application/json", "Content-Length": str(900_000)}
    for headers, code in [({**large, **bearer("fbp_not-a-party-token")}, "bad_token"), (large, "missing_token")]:
        with send_head(server, "POST", path, headers) as sock:  # no byte of the body is sent
            status, answer_headers, body = read_answer(sock)
            assert (status, body["error"]["code"], answer_headers["connection"]) == (401, code, "close")
            assert closed_by_server(sock)

    with send_head(server, "POST", path, {**large, **bearer(tokens["a"])}) as sock:  # a party's: the body is awaited
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.settimeout(BODY_TIMEOUT_S + 10)
        sock.sendall(b" " * 900_000)
        status, _, body = read_answer(sock)
        assert (status, body["error"]["code"]) == (422, "invalid_request")


# readiness


def test_readiness_fails_with_a_generic_message_while_the_database_is_locked_and_logs_why(server, client):
    locker = sqlite3.connect(server.database, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")  # another writer holds the database: this server could not commit
        error = assert_error(client.get("/readyz"), 503, "not_ready")
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert error["message"] == "the database is not available; see the server log"
    assert "readiness check failed: the database is not available: OperationalError: database is locked" in (
        server.log.read_text()
    )
    assert client.get("/readyz").json() == {"status": "ready"}

"""The HTTP server as parties and administrators see it: a real uvicorn process on 127.0.0.1, no mocks.

Covers authentication and authorization, a table of bad inputs (each must leave the stored state as
it was), duplicate and stale submissions, durability across SIGKILL, deadline closing when a party
disappears, long-polling, and the operational endpoints.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving import ServerProcess, admin_headers, tiny_spec

from fedbpt.protocol import encode_vector

MAX_BODY_BYTES = 16384
DIM = tiny_spec()["projection"]["dim"]
UNKNOWN_JOB = "0123456789ab"


# helpers


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def client_for(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=20)


def create_job(client: httpx.Client, **overrides) -> str:
    response = client.post("/v1/jobs", json=tiny_spec(**overrides), headers=admin_headers())
    assert response.status_code == 201, response.text
    return response.json()["id"]


def add_party(client: httpx.Client, job_id: str, name: str) -> str:
    response = client.post(f"/v1/jobs/{job_id}/parties", json={"name": name}, headers=admin_headers())
    assert response.status_code == 201, response.text
    return response.json()["token"]


def new_job(client: httpx.Client, parties: tuple[str, ...] = ("a", "b"), **overrides) -> tuple[str, dict[str, str]]:
    """A job and a token for each named party."""
    job_id = create_job(client, **overrides)
    return job_id, {name: add_party(client, job_id, name) for name in parties}


def party_update(party: str, round_number: int, **changes) -> dict:
    """A valid update whose content depends only on the party and the round (so runs can be replayed)."""
    rng = np.random.default_rng([ord(letter) for letter in party] + [round_number])
    body = {
        "round": round_number,
        "mean": encode_vector(rng.normal(size=DIM)),
        "sigmas": [0.9, 0.8],
        "sigma": 0.7,
        "fitness": float(rng.uniform(0.2, 0.8)),
        "n_examples": 16,
    }
    return {**body, **changes}


def post_update(client: httpx.Client, job_id: str, token: str, body: dict, round_number: int | None = None):
    round_number = body["round"] if round_number is None else round_number
    return client.post(f"/v1/jobs/{job_id}/rounds/{round_number}/updates", json=body, headers=bearer(token))


def submit(client: httpx.Client, job_id: str, tokens: dict[str, str], party: str, round_number: int) -> dict:
    response = post_update(client, job_id, tokens[party], party_update(party, round_number))
    assert response.status_code == 201, response.text
    return response.json()


def play_round(client: httpx.Client, job_id: str, tokens: dict[str, str], round_number: int) -> None:
    for party in tokens:
        submit(client, job_id, tokens, party, round_number)


def job_view(client: httpx.Client, job_id: str) -> dict:
    response = client.get(f"/v1/jobs/{job_id}", headers=admin_headers())
    assert response.status_code == 200, response.text
    return response.json()


def history(client: httpx.Client, job_id: str) -> dict:
    response = client.get(f"/v1/jobs/{job_id}/history", headers=admin_headers())
    assert response.status_code == 200, response.text
    return response.json()


def snapshot(client: httpx.Client, job_id: str) -> tuple[dict, dict]:
    return job_view(client, job_id), history(client, job_id)


def final_z(client: httpx.Client, job_id: str) -> str:
    response = client.get(f"/v1/jobs/{job_id}/prompt", params={"which": "final"}, headers=admin_headers())
    assert response.status_code == 200, response.text
    return response.json()["z"]


def assert_error(response: httpx.Response, status: int, code: str, phrase: str = "") -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["status"], error["code"]) == (status, code), error
    assert phrase.lower() in error["message"].lower(), error


def counter(client: httpx.Client, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def fetch_round(client: httpx.Client, job_id: str, token: str) -> dict:
    response = client.get(f"/v1/jobs/{job_id}/round", headers=bearer(token))
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_round(client: httpx.Client, job_id: str, token: str, after: int, wait: float = 10) -> dict:
    response = client.get(f"/v1/jobs/{job_id}/round", params={"after": after, "wait": wait}, headers=bearer(token))
    assert response.status_code == 200, response.text
    return response.json()


# fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp("server") / "fedbpt.db", env={"FEDBPT_MAX_BODY_BYTES": str(MAX_BODY_BYTES)}
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server) -> Iterator[httpx.Client]:
    with client_for(server) as http:
        yield http


@pytest.fixture(scope="module")
def two_jobs(client) -> dict:
    """Job ``mine`` with party a, job ``other`` with party b."""
    mine, mine_tokens = new_job(client, parties=("a",))
    other, other_tokens = new_job(client, parties=("b",))
    return {"mine": mine, "other": other, "party": mine_tokens["a"], "other_party": other_tokens["b"]}


@pytest.fixture(scope="module")
def open_round(client) -> dict:
    """A job at round 1 with one of two updates in; party c has sent nothing yet and sends the bad inputs."""
    job_id, tokens = new_job(client, parties=("a", "b", "c"))
    submit(client, job_id, tokens, "a", 0)
    submit(client, job_id, tokens, "b", 0)
    submit(client, job_id, tokens, "a", 1)
    view = job_view(client, job_id)
    assert (view["round"], view["updates_this_round"]) == (1, 1)
    return {"job": job_id, "token": tokens["c"]}


# authentication and authorization


@dataclass(frozen=True)
class AuthCase:
    method: str
    path: str  # {job} is the job of party "party"
    who: str  # none, wrong, basic, admin, party, other_party
    status: int
    code: str


def headers_of(who: str, jobs: dict) -> dict:
    return {
        "none": {},
        "wrong": bearer("not-a-token-of-anyone-0123456789"),
        "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
        "admin": admin_headers(),
        "party": bearer(jobs["party"]),
        "other_party": bearer(jobs["other_party"]),
    }[who]


AUTH_CASES = [
    AuthCase("GET", "/v1/jobs", "none", 401, "missing_token"),
    AuthCase("GET", "/v1/jobs", "basic", 401, "missing_token"),
    AuthCase("GET", "/v1/jobs", "wrong", 401, "bad_token"),
    AuthCase("GET", "/v1/jobs", "party", 403, "admin_only"),
    AuthCase("POST", "/v1/jobs", "party", 403, "admin_only"),
    AuthCase("GET", "/v1/jobs/{job}", "party", 403, "admin_only"),
    AuthCase("POST", "/v1/jobs/{job}/cancel", "party", 403, "admin_only"),
    AuthCase("POST", "/v1/jobs/{job}/parties", "party", 403, "admin_only"),
    AuthCase("POST", "/v1/jobs/{job}/enrollments", "party", 403, "admin_only"),
    AuthCase("GET", "/v1/me", "none", 401, "missing_token"),
    AuthCase("GET", "/v1/me", "wrong", 401, "bad_token"),
    AuthCase("GET", "/v1/me", "admin", 403, "party_only"),
    AuthCase("POST", "/v1/jobs/{job}/rounds/0/updates", "admin", 403, "party_only"),
    AuthCase("GET", "/v1/jobs/{job}/spec", "none", 401, "missing_token"),
    AuthCase("GET", "/v1/jobs/{job}/spec", "other_party", 403, "wrong_job"),
    AuthCase("GET", "/v1/jobs/{job}/round", "wrong", 401, "bad_token"),
    AuthCase("GET", "/v1/jobs/{job}/round", "other_party", 403, "wrong_job"),
    AuthCase("POST", "/v1/jobs/{job}/rounds/0/updates", "none", 401, "missing_token"),
    AuthCase("POST", "/v1/jobs/{job}/rounds/0/updates", "other_party", 403, "wrong_job"),
    AuthCase("POST", "/v1/jobs/{job}/rounds/0/evaluations", "other_party", 403, "wrong_job"),
    AuthCase("GET", "/v1/jobs/{job}/history", "none", 401, "missing_token"),
    AuthCase("GET", "/v1/jobs/{job}/history", "wrong", 401, "bad_token"),
    AuthCase("GET", "/v1/jobs/{job}/history", "other_party", 403, "wrong_job"),
    AuthCase("GET", "/v1/jobs/{job}/prompt", "none", 401, "missing_token"),
    AuthCase("GET", "/v1/jobs/{job}/prompt", "other_party", 403, "wrong_job"),
]


def request_body(path: str) -> dict | None:
    """A valid body for the route, so that only the credentials can be the reason for a refusal."""
    if path.endswith("/updates"):
        return party_update("a", 0)
    if path.endswith("/evaluations"):
        return {"accuracy": 0.5, "n_examples": 10}
    if path.endswith(("/parties", "/enrollments")):
        return {"name": "intruder"}
    return tiny_spec() if path == "/v1/jobs" else None


@pytest.mark.parametrize("case", AUTH_CASES, ids=lambda case: f"{case.method} {case.path} as {case.who}")
def test_credentials_are_checked(client, two_jobs, case):
    before = snapshot(client, two_jobs["mine"]), client.get("/v1/jobs", headers=admin_headers()).json()
    path = case.path.format(job=two_jobs["mine"])
    body = request_body(case.path) if case.method == "POST" else None
    response = client.request(case.method, path, json=body, headers=headers_of(case.who, two_jobs))
    assert_error(response, case.status, case.code)
    assert (snapshot(client, two_jobs["mine"]), client.get("/v1/jobs", headers=admin_headers()).json()) == before


@pytest.mark.parametrize("who", ["admin", "party"])
@pytest.mark.parametrize("route", ["history", "prompt", "prompt?which=final"])
def test_admin_and_the_jobs_parties_read_history_and_prompt(client, two_jobs, route, who):
    response = client.get(f"/v1/jobs/{two_jobs['mine']}/{route}", headers=headers_of(who, two_jobs))
    assert response.status_code == 200, response.text
    assert response.json()["job"] == two_jobs["mine"]


def test_party_routes_answer_the_party(client, two_jobs):
    headers = headers_of("party", two_jobs)
    assert client.get("/v1/me", headers=headers).json() == {"job": two_jobs["mine"], "party": "a", "index": 0}
    assert client.get(f"/v1/jobs/{two_jobs['mine']}/spec", headers=headers).json()["projection"]["dim"] == DIM
    info = client.get(f"/v1/jobs/{two_jobs['mine']}/round", headers=headers).json()
    assert (info["round"], info["status"], info["submitted"]) == (0, "running", False)


def test_best_prompt_needs_an_evaluation(client, two_jobs):
    response = client.get(f"/v1/jobs/{two_jobs['mine']}/prompt?which=best", headers=admin_headers())
    assert_error(response, 404, "no_evaluations", "which=final")


def test_enrollment_secret_is_redeemed_once(client):
    job_id = create_job(client)
    response = client.post(f"/v1/jobs/{job_id}/enrollments", json={"name": "edge"}, headers=admin_headers())
    assert response.status_code == 201, response.text
    secret = response.json()["secret"]
    assert_error(client.get("/v1/me", headers=bearer(secret)), 401, "bad_token")

    redeemed = client.post("/v1/enroll", json={"secret": secret})
    assert redeemed.status_code == 201, redeemed.text
    token = redeemed.json()["token"]
    assert client.get("/v1/me", headers=bearer(token)).json() == {"job": job_id, "party": "edge", "index": 0}
    assert job_view(client, job_id)["parties"] == ["edge"]

    assert_error(client.post("/v1/enroll", json={"secret": secret}), 409, "secret_used", "ask for a new one")
    assert client.get("/v1/me", headers=bearer(token)).status_code == 200
    assert_error(client.post("/v1/enroll", json={"secret": "fbe_made-up"}), 401, "bad_secret", "administrator")


# bad inputs: each refused with an actionable message, and nothing stored changes


def changed(**changes) -> Callable[[dict], dict]:
    return lambda body: {**body, **changes}


def without(key: str) -> Callable[[dict], dict]:
    return lambda body: {name: value for name, value in body.items() if name != key}


def raw(text: str) -> Callable[[dict], str]:
    return lambda body: text


@dataclass(frozen=True)
class BadUpdate:
    id: str
    make: Callable[[dict], dict | str]  # a valid update for the open round -> the body to send
    status: int
    code: str
    phrase: str
    path_round: int = 1  # the open round
    path_job: str | None = None  # None: the fixture's job


NAN_B64 = encode_vector(np.full(DIM, np.nan))
INF_B64 = encode_vector(np.r_[np.inf, np.zeros(DIM - 1)])

BAD_UPDATES = [
    BadUpdate("wrong_dimension_list", changed(mean=[0.0] * (DIM - 1)), 422, "invalid_update", f"expected ({DIM},)"),
    BadUpdate("wrong_dimension_b64", changed(mean=encode_vector(np.zeros(DIM + 1))), 422, "invalid_update", "shape"),
    BadUpdate("nan_raw_json_mean", changed(mean=[math.nan] * DIM), 422, "invalid_request", "finite number"),
    BadUpdate("nan_raw_json_fitness", changed(fitness=math.nan), 422, "invalid_request", "fitness"),
    BadUpdate("nan_b64_mean", changed(mean=NAN_B64), 422, "invalid_update", "NaN or infinite"),
    BadUpdate("infinity_raw_json_sigma", changed(sigma=math.inf), 422, "invalid_request", "finite number"),
    BadUpdate("infinity_b64_mean", changed(mean=INF_B64), 422, "invalid_update", "NaN or infinite"),
    BadUpdate("norm_over_bound", changed(mean=[1e4] * DIM), 422, "invalid_update", "exceeds the bound"),
    BadUpdate("sigma_zero", changed(sigma=0.0), 422, "invalid_update", "positive"),
    BadUpdate("local_sigma_negative", changed(sigmas=[0.9, -0.1]), 422, "invalid_update", "positive"),
    BadUpdate("sigma_too_big", changed(sigma=5e3), 422, "invalid_update", "at most 1000"),
    BadUpdate("sigmas_empty", changed(sigmas=[]), 422, "invalid_request", "sigmas"),
    BadUpdate("sigmas_too_many", changed(sigmas=[0.9, 0.8, 0.7]), 422, "invalid_update", "2 local iterations"),
    BadUpdate("n_examples_zero", changed(n_examples=0), 422, "invalid_request", "n_examples"),
    BadUpdate("n_examples_negative", changed(n_examples=-5), 422, "invalid_request", "n_examples"),
    BadUpdate("n_examples_string", changed(n_examples="16"), 422, "invalid_request", "n_examples"),
    BadUpdate("n_examples_bool", changed(n_examples=True), 422, "invalid_request", "n_examples"),
    BadUpdate("round_string", changed(round="1"), 422, "invalid_request", "round"),
    BadUpdate("unknown_field", changed(weights=[1.0]), 422, "invalid_request", "weights"),
    BadUpdate("missing_field", without("fitness"), 422, "invalid_request", "fitness: field required"),
    BadUpdate("malformed_base64", changed(mean="not base64!"), 422, "invalid_update", "base64"),
    BadUpdate("base64_partial_float", changed(mean="AAAA" * 8 + "AAA="), 422, "invalid_update", "float32"),
    BadUpdate("body_round_differs_from_path", changed(round=2), 422, "round_mismatch", "the path says 1"),
    BadUpdate("stale_round", changed(round=0), 409, "stale_round", "open round is 1", path_round=0),
    BadUpdate("future_round", changed(round=2), 409, "future_round", "not open yet", path_round=2),
    BadUpdate("unknown_job", lambda body: body, 403, "wrong_job", "another job", path_job=UNKNOWN_JOB),
    BadUpdate("body_too_large", changed(mean=[0.25] * 4000), 413, "body_too_large", "FEDBPT_MAX_BODY_BYTES"),
    BadUpdate("malformed_json", raw('{"round": 1, "mean": '), 422, "invalid_request", "not valid JSON"),
    BadUpdate("not_an_object", raw("[1, 2, 3]"), 422, "invalid_request", "dictionary"),
]


@pytest.mark.parametrize("case", BAD_UPDATES, ids=lambda case: case.id)
def test_bad_update_is_refused_and_changes_nothing(client, open_round, case):
    job_id = open_round["job"]
    before = snapshot(client, job_id)
    body = case.make(party_update("c", 1))
    content = body if isinstance(body, str) else json.dumps(body)  # json.dumps writes NaN/Infinity literally
    response = client.post(
        f"/v1/jobs/{case.path_job or job_id}/rounds/{case.path_round}/updates",
        content=content,
        headers={**bearer(open_round["token"]), "Content-Type": "application/json"},
    )
    assert_error(response, case.status, case.code, case.phrase)
    after = snapshot(client, job_id)
    assert after == before
    assert (after[0]["round"], after[0]["updates_this_round"]) == (1, 1)


def test_chunked_body_over_the_limit_is_refused(client, open_round):
    chunk = b" " * 4096

    def chunks() -> Iterator[bytes]:
        yield from [chunk] * (MAX_BODY_BYTES // len(chunk) + 2)

    before = snapshot(client, open_round["job"])
    response = client.post(
        f"/v1/jobs/{open_round['job']}/rounds/1/updates",
        content=chunks(),
        headers={**bearer(open_round["token"]), "Content-Type": "application/json"},
    )
    assert_error(response, 413, "body_too_large", f"exceeds {MAX_BODY_BYTES} bytes")
    assert snapshot(client, open_round["job"]) == before


def spec_without(key: str) -> dict:
    return {name: value for name, value in tiny_spec().items() if name != key}


@dataclass(frozen=True)
class BadAdminRequest:
    id: str
    method: str
    path: str  # {job} is an existing job
    body: dict | str | None
    status: int
    code: str
    phrase: str


BAD_ADMIN_REQUESTS = [
    BadAdminRequest(
        "quorum_over_parties_per_round",
        "POST",
        "/v1/jobs",
        tiny_spec(quorum=3),
        422,
        "invalid_request",
        "quorum (3) cannot exceed parties_per_round (2)",
    ),
    BadAdminRequest("unknown_task", "POST", "/v1/jobs", tiny_spec(task="nope"), 422, "invalid_request", "sst2"),
    BadAdminRequest(
        "task_file_missing_keys", "POST", "/v1/jobs", tiny_spec(task={"name": "x"}), 422, "invalid_request", "missing"
    ),
    BadAdminRequest("zero_rounds", "POST", "/v1/jobs", tiny_spec(rounds=0), 422, "invalid_request", "rounds"),
    BadAdminRequest("rounds_string", "POST", "/v1/jobs", tiny_spec(rounds="3"), 422, "invalid_request", "rounds"),
    BadAdminRequest(
        "unknown_aggregator", "POST", "/v1/jobs", tiny_spec(aggregator="sum"), 422, "invalid_request", "fedavg"
    ),
    BadAdminRequest(
        "sigma0_nan", "POST", "/v1/jobs", tiny_spec(sigma0=math.nan), 422, "invalid_request", "finite number"
    ),
    BadAdminRequest(
        "zero_deadline", "POST", "/v1/jobs", tiny_spec(round_deadline_s=0), 422, "invalid_request", "round_deadline_s"
    ),
    BadAdminRequest("unknown_spec_field", "POST", "/v1/jobs", tiny_spec(extra=1), 422, "invalid_request", "extra"),
    BadAdminRequest("missing_model", "POST", "/v1/jobs", spec_without("model"), 422, "invalid_request", "model"),
    BadAdminRequest("malformed_spec_json", "POST", "/v1/jobs", '{"rounds": ', 422, "invalid_request", "not valid JSON"),
    BadAdminRequest("unknown_job", "GET", f"/v1/jobs/{UNKNOWN_JOB}", None, 404, "unknown_job", "GET /v1/jobs"),
    BadAdminRequest(
        "party_of_unknown_job", "POST", f"/v1/jobs/{UNKNOWN_JOB}/parties", {"name": "x"}, 404, "unknown_job", ""
    ),
    BadAdminRequest("cancel_unknown_job", "POST", f"/v1/jobs/{UNKNOWN_JOB}/cancel", None, 404, "unknown_job", ""),
    BadAdminRequest(
        "party_name_with_space", "POST", "/v1/jobs/{job}/parties", {"name": "a b"}, 422, "invalid_request", "name"
    ),
    BadAdminRequest(
        "party_name_taken", "POST", "/v1/jobs/{job}/parties", {"name": "a"}, 409, "party_exists", "pick another name"
    ),
    BadAdminRequest(
        "enrollment_name_taken", "POST", "/v1/jobs/{job}/enrollments", {"name": "a"}, 409, "party_exists", "a"
    ),
]


@pytest.mark.parametrize("case", BAD_ADMIN_REQUESTS, ids=lambda case: case.id)
def test_bad_admin_request_is_refused_and_changes_nothing(client, two_jobs, case):
    before = client.get("/v1/jobs", headers=admin_headers()).json()
    content = None if case.body is None else case.body if isinstance(case.body, str) else json.dumps(case.body)
    response = client.request(
        case.method,
        case.path.format(job=two_jobs["mine"]),
        content=content,
        headers={**admin_headers(), "Content-Type": "application/json"},
    )
    assert_error(response, case.status, case.code, case.phrase)
    assert client.get("/v1/jobs", headers=admin_headers()).json() == before


# duplicates and stale submissions


def test_identical_resend_is_idempotent_and_a_different_one_conflicts(client):
    job_id, tokens = new_job(client, parties=("a", "b", "c"))
    closed_before = counter(client, "fedbpt_rounds_closed_total", reason="parties_per_round")
    first = post_update(client, job_id, tokens["a"], party_update("a", 0))
    assert first.status_code == 201 and first.json()["duplicate"] is False

    resent = post_update(client, job_id, tokens["a"], party_update("a", 0))
    assert resent.status_code == 200 and resent.json()["duplicate"] is True
    assert job_view(client, job_id)["updates_this_round"] == 1

    before = snapshot(client, job_id)
    different = post_update(client, job_id, tokens["a"], party_update("a", 0, fitness=0.01))
    assert_error(different, 409, "conflicting_update", "one update per party per round")
    assert snapshot(client, job_id) == before

    assert submit(client, job_id, tokens, "b", 0)["round_closed"] is True
    after_close = snapshot(client, job_id)
    resent_after_close = post_update(client, job_id, tokens["b"], party_update("b", 0))
    assert resent_after_close.status_code == 200
    assert resent_after_close.json() == {**resent_after_close.json(), "duplicate": True, "round_closed": False}
    assert snapshot(client, job_id) == after_close
    assert len(after_close[1]["rounds"]) == 1
    assert counter(client, "fedbpt_rounds_closed_total", reason="parties_per_round") == closed_before + 1

    late = post_update(client, job_id, tokens["c"], party_update("c", 0))
    assert_error(late, 409, "stale_round", "round 0 is closed")
    assert snapshot(client, job_id) == after_close


def test_updates_after_the_job_ends_are_refused(client):
    job_id, tokens = new_job(client, rounds=1)
    play_round(client, job_id, tokens, 0)
    assert job_view(client, job_id)["status"] == "finished"
    assert_error(post_update(client, job_id, tokens["a"], party_update("a", 1)), 409, "job_not_running", "finished")

    other_id, other_tokens = new_job(client)
    assert client.post(f"/v1/jobs/{other_id}/cancel", headers=admin_headers()).json()["status"] == "cancelled"
    refused = post_update(client, other_id, other_tokens["a"], party_update("a", 0))
    assert_error(refused, 409, "job_not_running", "cancelled")
    cancel_again = client.post(f"/v1/jobs/{other_id}/cancel", headers=admin_headers())
    assert_error(cancel_again, 409, "job_not_running", "already cancelled")


def test_concurrent_submissions_close_the_round_once(client):
    parties = ("a", "b", "c", "d")
    job_id, tokens = new_job(client, parties=parties, parties_per_round=4, quorum=4)
    requests = [(party, party_update(party, 0)) for party in parties for _ in range(3)]
    with ThreadPoolExecutor(len(requests)) as pool:
        responses = list(pool.map(lambda item: post_update(client, job_id, tokens[item[0]], item[1]), requests))
    assert sorted(response.status_code for response in responses) == [200] * 8 + [201] * 4
    assert [response.json()["round_closed"] for response in responses].count(True) == 1
    [record] = history(client, job_id)["rounds"]
    assert record["parties"] == list(parties)
    assert job_view(client, job_id)["round"] == 1


def test_evaluations_are_stored_once_and_feed_the_best_prompt(client):
    job_id, tokens = new_job(client)
    path = f"/v1/jobs/{job_id}/rounds/{{}}/evaluations"
    report = {"accuracy": 0.75, "n_examples": 20}
    assert_error(client.post(path.format(1), json=report, headers=bearer(tokens["a"])), 409, "future_round")
    too_high = client.post(path.format(0), json={**report, "accuracy": 1.5}, headers=bearer(tokens["a"]))
    assert_error(too_high, 422, "invalid_request", "accuracy")
    assert client.post(path.format(0), json=report, headers=bearer(tokens["a"])).status_code == 201
    assert client.post(path.format(0), json=report, headers=bearer(tokens["a"])).status_code == 200
    changed_report = client.post(path.format(0), json={**report, "accuracy": 0.5}, headers=bearer(tokens["a"]))
    assert_error(changed_report, 409, "conflicting_evaluation")
    assert history(client, job_id)["initial_accuracy"] == 0.75
    best = client.get(f"/v1/jobs/{job_id}/prompt", params={"which": "best"}, headers=bearer(tokens["b"])).json()
    assert (best["round"], best["accuracy"]) == (0, 0.75)


def test_round_answer_follows_submissions_round_closing_and_cancellation(client):
    """The server keeps each job's round answer in memory: it must change with every committed change."""
    job_id, tokens = new_job(client)
    first = fetch_round(client, job_id, tokens["a"])
    assert set(first) == {"job", "status", "round", "mean", "sigma", "deadline", "submitted"}
    assert (first["round"], first["status"], first["submitted"]) == (0, "running", False)

    submit(client, job_id, tokens, "a", 0)
    assert fetch_round(client, job_id, tokens["a"])["submitted"] is True
    assert fetch_round(client, job_id, tokens["b"]) == first

    submit(client, job_id, tokens, "b", 0)
    second = fetch_round(client, job_id, tokens["a"])
    assert (second["round"], second["submitted"]) == (1, False)
    assert second["mean"] == final_z(client, job_id) != first["mean"]
    assert second["deadline"] >= first["deadline"]

    submit(client, job_id, tokens, "a", 1)
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=admin_headers()).status_code == 200
    cancelled = fetch_round(client, job_id, tokens["a"])
    assert {key: cancelled[key] for key in ("status", "round", "deadline", "submitted")} == {
        "status": "cancelled",
        "round": 1,
        "deadline": None,
        "submitted": True,
    }
    assert fetch_round(client, job_id, tokens["b"])["submitted"] is False


# durability and determinism


def test_tokens_and_round_answers_are_rebuilt_from_the_store_after_a_restart(tmp_path):
    server = ServerProcess(tmp_path / "restarted.db")
    try:
        server.start()
        with client_for(server) as client:
            job_id, tokens = new_job(client)
            submit(client, job_id, tokens, "a", 0)
            enrollment = client.post(f"/v1/jobs/{job_id}/enrollments", json={"name": "late"}, headers=admin_headers())
            before = {party: fetch_round(client, job_id, token) for party, token in tokens.items()}
        assert (before["a"]["submitted"], before["b"]["submitted"]) == (True, False)
        server.kill()
        server.start()
        with client_for(server) as client:
            assert {party: fetch_round(client, job_id, token) for party, token in tokens.items()} == before
            redeemed = client.post("/v1/enroll", json={"secret": enrollment.json()["secret"]})
            assert redeemed.status_code == 201, redeemed.text
            token = redeemed.json()["token"]
            assert client.get("/v1/me", headers=bearer(token)).json() == {"job": job_id, "party": "late", "index": 2}
            assert fetch_round(client, job_id, token) == before["b"]
    finally:
        server.stop()


def uninterrupted_final_z(server: ServerProcess) -> str:
    server.start()
    with client_for(server) as client:
        job_id, tokens = new_job(client)
        for round_number in range(tiny_spec()["rounds"]):
            play_round(client, job_id, tokens, round_number)
        assert job_view(client, job_id)["status"] == "finished"
        return final_z(client, job_id)


def test_sigkill_mid_round_loses_no_accepted_update_and_ends_at_the_same_prompt(tmp_path):
    server = ServerProcess(tmp_path / "crashed.db")
    try:
        server.start()
        with client_for(server) as client:
            job_id, tokens = new_job(client)
            play_round(client, job_id, tokens, 0)
            submit(client, job_id, tokens, "a", 1)
            before = snapshot(client, job_id)
        server.kill()
        server.start()
        with client_for(server) as client:
            assert snapshot(client, job_id) == before
            assert (before[0]["round"], before[0]["updates_this_round"], len(before[1]["rounds"])) == (1, 1, 1)
            resent = post_update(client, job_id, tokens["a"], party_update("a", 1))
            assert resent.status_code == 200 and resent.json()["duplicate"] is True
            submit(client, job_id, tokens, "b", 1)
            play_round(client, job_id, tokens, 2)
            assert job_view(client, job_id)["status"] == "finished"
            crashed_z = final_z(client, job_id)
    finally:
        server.stop()
    clean = ServerProcess(tmp_path / "clean.db")
    try:
        assert crashed_z == uninterrupted_final_z(clean)
    finally:
        clean.stop()


# deadlines


def test_round_closes_at_the_deadline_when_a_party_disappears(client):
    job_id, tokens = new_job(client, parties=("a", "b", "c"), parties_per_round=3, quorum=2, round_deadline_s=1.5)
    deadlines_before = counter(client, "fedbpt_rounds_closed_total", reason="deadline")
    submit(client, job_id, tokens, "a", 0)
    assert submit(client, job_id, tokens, "b", 0)["round_closed"] is False
    assert (job_view(client, job_id)["round"], job_view(client, job_id)["updates_this_round"]) == (0, 2)

    assert wait_for_round(client, job_id, tokens["a"], after=0)["round"] == 1
    [record] = history(client, job_id)["rounds"]
    assert (record["reason"], record["parties"]) == ("deadline", ["a", "b"])
    assert record["seconds"] >= 1.5
    assert counter(client, "fedbpt_rounds_closed_total", reason="deadline") == deadlines_before + 1

    late = post_update(client, job_id, tokens["c"], party_update("c", 0))
    assert_error(late, 409, "stale_round", "the open round is 1")
    assert job_view(client, job_id)["updates_this_round"] == 0


# long-poll


def test_long_poll_returns_promptly_when_the_round_closes(client):
    job_id, tokens = new_job(client)
    submit(client, job_id, tokens, "a", 0)
    answer: dict = {}

    def poll() -> None:
        answer["info"] = wait_for_round(client, job_id, tokens["a"], after=0, wait=10)
        answer["at"] = time.monotonic()

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.5)
    assert poller.is_alive(), "the long-poll answered before the round changed"
    closed_at = time.monotonic()
    submit(client, job_id, tokens, "b", 0)
    poller.join(10)
    assert not poller.is_alive()
    assert (answer["info"]["round"], answer["info"]["submitted"]) == (1, False)
    assert answer["at"] - closed_at < 1.5


def test_long_poll_without_change_returns_after_wait(client):
    job_id, tokens = new_job(client)
    started = time.monotonic()
    info = wait_for_round(client, job_id, tokens["a"], after=0, wait=1)
    assert 0.9 <= time.monotonic() - started < 3
    assert (info["round"], info["status"]) == (0, "running")


def test_long_poll_returns_when_the_job_is_cancelled(client):
    job_id, tokens = new_job(client)
    timer = threading.Timer(0.5, lambda: client.post(f"/v1/jobs/{job_id}/cancel", headers=admin_headers()))
    started = time.monotonic()
    timer.start()
    info = wait_for_round(client, job_id, tokens["a"], after=0, wait=10)
    timer.join()
    assert time.monotonic() - started < 3
    assert (info["status"], info["deadline"]) == ("cancelled", None)


# operations


def test_metrics_count_accepted_and_rejected_updates(client):
    job_id, tokens = new_job(client)
    outcomes = ("accepted", "duplicate", "rejected_invalid", "rejected_conflict", "rejected_future_round")
    before = {outcome: counter(client, "fedbpt_updates_total", outcome=outcome) for outcome in outcomes}
    submit(client, job_id, tokens, "a", 0)
    post_update(client, job_id, tokens["a"], party_update("a", 0))
    post_update(client, job_id, tokens["a"], party_update("a", 0, fitness=0.0))
    post_update(client, job_id, tokens["b"], party_update("b", 0, sigma=-1.0))
    post_update(client, job_id, tokens["b"], party_update("b", 1))
    after = {outcome: counter(client, "fedbpt_updates_total", outcome=outcome) for outcome in outcomes}
    assert {outcome: after[outcome] - before[outcome] for outcome in outcomes} == dict.fromkeys(outcomes, 1.0)
    assert counter(client, "fedbpt_request_seconds_count", method="GET", route="/v1/jobs/{job_id}", status="200") > 0


@pytest.mark.parametrize("path, expected", [("/healthz", "ok"), ("/readyz", "ready")])
def test_health_and_readiness(client, path, expected):
    response = client.get(path)
    assert response.status_code == 200 and response.json() == {"status": expected}


def test_docs_and_unknown_routes(client):
    assert client.get("/docs").status_code == 200
    assert "/v1/jobs/{job_id}/rounds/{round_number}/updates" in client.get("/openapi.json").json()["paths"]
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.delete("/v1/jobs", headers=admin_headers()), 405, "method_not_allowed")

"""The HTTP server as parties and administrators see it: a real uvicorn process on 127.0.0.1, no mocks.

Covers authentication and authorization, a table of bad inputs (each must leave the stored state as
it was), duplicate and stale reports, the round kinds (the start round, search rounds with best-so-far and
backtracking, the final round), durability across SIGKILL, deadline closing when a party disappears,
long-polling, the wire budget and the operational endpoints. Reports are synthetic: no model runs here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving import ADMIN_TOKEN, ServerProcess, admin_headers, tiny_spec
from typer.testing import CliRunner

from fedbpt import rounds
from fedbpt.job import LearnedPrompt
from fedbpt.protocol import Update, decode_vector, encode_vector, on_wire
from fedbpt.spec import JobSpec, from_dict

MAX_BODY_BYTES = 16384
SPEC = from_dict(tiny_spec())
DIM = SPEC.prompt.dim
UNKNOWN_JOB = "0123456789ab"


# helpers


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def client_for(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=20)


def create_job(client: httpx.Client, **sections) -> str:
    response = client.post("/v1/jobs", json=tiny_spec(**sections), headers=admin_headers())
    assert response.status_code == 201, response.text
    return response.json()["id"]


def add_party(client: httpx.Client, job_id: str, name: str) -> str:
    response = client.post(f"/v1/jobs/{job_id}/parties", json={"name": name}, headers=admin_headers())
    assert response.status_code == 201, response.text
    return response.json()["token"]


def new_job(client: httpx.Client, parties: tuple[str, ...] = ("a", "b"), **sections) -> tuple[str, dict[str, str]]:
    """A job (``tiny_spec(**sections)``) and a token for each named party."""
    job_id = create_job(client, **sections)
    return job_id, {name: add_party(client, job_id, name) for name in parties}


def kind_of(spec: JobSpec, round_number: int) -> str:
    if round_number == 0:
        return "start"
    return "final" if round_number > spec.federation.rounds else "search"


def party_report(party: str, round_number: int, spec: JobSpec = SPEC, **changes) -> dict:
    """A valid report body for the round (its kind follows the round) whose content depends only on the party
    and the round, so runs can be replayed."""
    rng = np.random.default_rng([ord(letter) for letter in party] + [round_number])
    kind = kind_of(spec, round_number)
    if kind == "search":
        body = {
            "kind": "search",
            "round": round_number,
            "loss": float(rng.uniform(0.5, 0.7)),
            "mean": encode_vector(rng.normal(size=spec.prompt.dim), spec.wire),
            "sigmas": [0.45, 0.4],
            "sigma": 0.35,
            "fitness": float(rng.uniform(0.2, 0.8)),
            "n_examples": 16,
        }
    else:
        candidates = len(spec.prompt.starts) if kind == "start" else 1
        body = {"kind": "scores", "round": round_number, "losses": rng.uniform(0.5, 0.7, candidates).tolist()}
        body["n_examples"] = 16
    return {**body, **changes}


def post_report(client: httpx.Client, job_id: str, token: str, body: dict, round_number: int | None = None):
    round_number = body["round"] if round_number is None else round_number
    return client.post(f"/v1/jobs/{job_id}/rounds/{round_number}/reports", json=body, headers=bearer(token))


def submit(client: httpx.Client, job_id: str, tokens: dict[str, str], party: str, round_number: int, **changes):
    spec = from_dict(job_view(client, job_id)["spec"])
    response = post_report(client, job_id, tokens[party], party_report(party, round_number, spec, **changes))
    assert response.status_code == 201, response.text
    return response.json()


def play_round(client: httpx.Client, job_id: str, tokens: dict[str, str], round_number: int, **changes) -> None:
    for party in tokens:
        submit(client, job_id, tokens, party, round_number, **changes)


def play_job(client: httpx.Client, job_id: str, tokens: dict[str, str]) -> None:
    """Every party reports every round until the job finishes."""
    while job_view(client, job_id)["status"] == "running":
        play_round(client, job_id, tokens, job_view(client, job_id)["round"])


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


def prompt_of(client: httpx.Client, job_id: str, which: str = "best") -> dict:
    response = client.get(f"/v1/jobs/{job_id}/prompt", params={"which": which}, headers=admin_headers())
    assert response.status_code == 200, response.text
    return response.json()


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


def fedbpt(server: ServerProcess, *arguments: str) -> str:
    """Run a ``fedbpt`` command in this process against the server; its output."""
    from clients.cli import app

    environment = {"FEDBPT_SERVER": server.url, "FEDBPT_ADMIN_TOKEN": ADMIN_TOKEN}
    result = CliRunner().invoke(app, list(arguments), env=environment)
    assert result.exit_code == 0, result.output
    return result.output


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
    """Job ``mine`` with party a, job ``other`` with party b; both at their first search round."""
    mine, mine_tokens = new_job(client, parties=("a",))
    other, other_tokens = new_job(client, parties=("b",))
    return {"mine": mine, "other": other, "party": mine_tokens["a"], "other_party": other_tokens["b"]}


@pytest.fixture(scope="module")
def open_round(client) -> dict:
    """A job at search round 2 with one of two reports in; party c has sent nothing yet and sends the bad inputs."""
    job_id, tokens = new_job(client, parties=("a", "b", "c"), federation={"parties": 3, "parties_per_round": 2})
    play_round(client, job_id, {party: tokens[party] for party in "ab"}, 1)
    submit(client, job_id, tokens, "a", 2)
    view = job_view(client, job_id)
    assert (view["round"], view["kind"], view["reports_this_round"]) == (2, "search", 1)
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
    AuthCase("POST", "/v1/jobs/{job}/rounds/1/reports", "admin", 403, "party_only"),
    AuthCase("GET", "/v1/jobs/{job}/spec", "none", 401, "missing_token"),
    AuthCase("GET", "/v1/jobs/{job}/spec", "other_party", 403, "wrong_job"),
    AuthCase("GET", "/v1/jobs/{job}/round", "wrong", 401, "bad_token"),
    AuthCase("GET", "/v1/jobs/{job}/round", "other_party", 403, "wrong_job"),
    AuthCase("POST", "/v1/jobs/{job}/rounds/1/reports", "none", 401, "missing_token"),
    AuthCase("POST", "/v1/jobs/{job}/rounds/1/reports", "other_party", 403, "wrong_job"),
    AuthCase("POST", "/v1/jobs/{job}/rounds/0/evaluations", "other_party", 403, "wrong_job"),
    AuthCase("GET", "/v1/jobs/{job}/history", "none", 401, "missing_token"),
    AuthCase("GET", "/v1/jobs/{job}/history", "wrong", 401, "bad_token"),
    AuthCase("GET", "/v1/jobs/{job}/history", "other_party", 403, "wrong_job"),
    AuthCase("GET", "/v1/jobs/{job}/prompt", "none", 401, "missing_token"),
    AuthCase("GET", "/v1/jobs/{job}/prompt", "other_party", 403, "wrong_job"),
]


def request_body(path: str) -> dict | None:
    """A valid body for the route, so that only the credentials can be the reason for a refusal."""
    if path.endswith("/reports"):
        return party_report("a", 1)
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
@pytest.mark.parametrize("route", ["history", "prompt", "prompt?which=last"])
def test_admin_and_the_jobs_parties_read_history_and_prompt(client, two_jobs, route, who):
    response = client.get(f"/v1/jobs/{two_jobs['mine']}/{route}", headers=headers_of(who, two_jobs))
    assert response.status_code == 200, response.text
    assert response.json()["job"] == two_jobs["mine"]


def test_party_routes_answer_the_party(client, two_jobs):
    headers = headers_of("party", two_jobs)
    assert client.get("/v1/me", headers=headers).json() == {"job": two_jobs["mine"], "party": "a", "index": 0}
    assert from_dict(client.get(f"/v1/jobs/{two_jobs['mine']}/spec", headers=headers).json()) == SPEC
    info = client.get(f"/v1/jobs/{two_jobs['mine']}/round", headers=headers).json()
    assert (info["round"], info["kind"], info["status"], info["submitted"]) == (1, "search", "running", False)
    assert (info["start"], info["mean_round"], info["sigma"]) == ("preamble", 0, SPEC.search.step)


def test_the_prompt_before_any_scoring_is_the_start_and_there_is_none_while_the_start_is_chosen(client, two_jobs):
    for which in ("best", "last"):
        prompt = LearnedPrompt.from_dict(prompt_of(client, two_jobs["mine"], which))
        assert (prompt.job, prompt.round, prompt.loss, prompt.start) == (two_jobs["mine"], 0, None, "preamble")
        assert not prompt.z.any() and prompt.spec == SPEC
    choosing = create_job(client, prompt={"starts": ["preamble", "vocabulary"]})
    response = client.get(f"/v1/jobs/{choosing}/prompt", headers=admin_headers())
    assert_error(response, 409, "no_prompt_yet", "still choosing its start")


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


def scores(**fields) -> Callable[[dict], dict]:
    """A scores report for the open search round, instead of its update."""
    return lambda body: {"kind": "scores", "round": body["round"], "losses": [0.5], "n_examples": 16, **fields}


@dataclass(frozen=True)
class BadReport:
    id: str
    make: Callable[[dict], dict | str]  # a valid report for the open round -> the body to send
    status: int
    code: str
    phrase: str
    path_round: int | str = 2  # the open round
    path_job: str | None = None  # None: the fixture's job


NAN_B64 = encode_vector(np.full(DIM, np.nan), "float16")
INF_B64 = encode_vector(np.r_[np.inf, np.zeros(DIM - 1)], "float16")

BAD_REPORTS = [
    BadReport("wrong_dimension_list", changed(mean=[0.0] * (DIM - 1)), 422, "invalid_report", f"expected ({DIM},)"),
    BadReport(
        "wrong_dimension_b64", changed(mean=encode_vector(np.zeros(DIM + 1), "float16")), 422, "invalid_report", "shape"
    ),
    BadReport("nan_raw_json_mean", changed(mean=[math.nan] * DIM), 422, "invalid_request", "finite number"),
    BadReport("nan_raw_json_fitness", changed(fitness=math.nan), 422, "invalid_request", "fitness"),
    BadReport("nan_raw_json_loss", changed(loss=math.nan), 422, "invalid_request", "loss"),
    BadReport("nan_b64_mean", changed(mean=NAN_B64), 422, "invalid_report", "NaN or infinite"),
    BadReport("infinity_raw_json_sigma", changed(sigma=math.inf), 422, "invalid_request", "finite number"),
    BadReport("infinity_b64_mean", changed(mean=INF_B64), 422, "invalid_report", "NaN or infinite"),
    BadReport("norm_over_bound", changed(mean=[1e4] * DIM), 422, "invalid_report", "exceeds the bound"),
    BadReport("sigma_zero", changed(sigma=0.0), 422, "invalid_report", "positive"),
    BadReport("local_sigma_negative", changed(sigmas=[0.9, -0.1]), 422, "invalid_report", "positive"),
    BadReport("sigma_too_big", changed(sigma=5e3), 422, "invalid_report", "at most 1000"),
    BadReport("loss_negative", changed(loss=-0.5), 422, "invalid_report", "loss must be a finite number in [0"),
    BadReport("sigmas_empty", changed(sigmas=[]), 422, "invalid_request", "sigmas"),
    BadReport("sigmas_too_many", changed(sigmas=[0.9, 0.8, 0.7]), 422, "invalid_report", "one per local iteration"),
    BadReport("n_examples_zero", changed(n_examples=0), 422, "invalid_request", "n_examples"),
    BadReport("n_examples_negative", changed(n_examples=-5), 422, "invalid_request", "n_examples"),
    BadReport("n_examples_string", changed(n_examples="16"), 422, "invalid_request", "n_examples"),
    BadReport("n_examples_bool", changed(n_examples=True), 422, "invalid_request", "n_examples"),
    BadReport("round_string", changed(round="2"), 422, "invalid_request", "round"),
    BadReport("unknown_field", changed(weights=[1.0]), 422, "invalid_request", "weights"),
    BadReport("missing_field", without("fitness"), 422, "invalid_request", "fitness: field required"),
    BadReport("missing_kind", without("kind"), 422, "invalid_request", "discriminator 'kind'"),
    BadReport("unknown_kind", changed(kind="update"), 422, "invalid_request", "expected tags: 'search', 'scores'"),
    BadReport("wrong_kind_scores_in_a_search_round", scores(), 422, "invalid_report", "round 2 is a search round"),
    BadReport("scores_losses_not_a_list", scores(losses="0.5"), 422, "invalid_request", "scores.losses"),
    BadReport("scores_with_a_mean", scores(mean=[0.0] * DIM), 422, "invalid_request", "scores.mean"),
    BadReport("malformed_base64", changed(mean="not base64!"), 422, "invalid_report", "base64"),
    BadReport("base64_partial_float", changed(mean="AAAA" * 8 + "AA=="), 422, "invalid_report", "float16"),
    BadReport("body_round_differs_from_path", changed(round=3), 422, "round_mismatch", "the path says 2"),
    BadReport("stale_round", changed(round=1), 409, "stale_round", "open round is 2", path_round=1),
    BadReport("future_round", changed(round=3), 409, "future_round", "not open yet", path_round=3),
    BadReport("negative_round", changed(round=-1), 422, "invalid_request", "round", path_round=-1),
    # Found by a probe of a live server: a round past SQLite's integers was a 500, a float path taken as round 2,
    # a huge fitness overflowed the round's mean to Infinity.
    BadReport(
        "round_past_int64", changed(round=2**63), 422, "invalid_request", "less than or equal to", path_round=2**63
    ),
    BadReport(
        "round_as_a_float_in_the_path", lambda body: body, 422, "invalid_request", "round_number", path_round="2.0"
    ),
    BadReport("fitness_huge", changed(fitness=1e308), 422, "invalid_report", "fitness must be a finite number in [0"),
    BadReport("fitness_negative", changed(fitness=-1.0), 422, "invalid_report", "fitness must be a finite number"),
    BadReport("seconds_huge", changed(seconds=1e308), 422, "invalid_request", "seconds"),
    BadReport("evaluations_huge", changed(evaluations=10**30), 422, "invalid_request", "evaluations"),
    BadReport("unknown_job", lambda body: body, 403, "wrong_job", "another job", path_job=UNKNOWN_JOB),
    BadReport("body_too_large", changed(mean=[0.25] * 4000), 413, "body_too_large", "FEDBPT_MAX_BODY_BYTES"),
    BadReport("malformed_json", raw('{"round": 2, "mean": '), 422, "invalid_request", "not valid JSON"),
    BadReport("not_an_object", raw("[1, 2, 3]"), 422, "invalid_request", "dictionary"),
]


@pytest.mark.parametrize("case", BAD_REPORTS, ids=lambda case: case.id)
def test_bad_report_is_refused_and_changes_nothing(client, open_round, case):
    job_id = open_round["job"]
    before = snapshot(client, job_id)
    body = case.make(party_report("c", 2))
    content = body if isinstance(body, str) else json.dumps(body)  # json.dumps writes NaN/Infinity literally
    response = client.post(
        f"/v1/jobs/{case.path_job or job_id}/rounds/{case.path_round}/reports",
        content=content,
        headers={**bearer(open_round["token"]), "Content-Type": "application/json"},
    )
    assert_error(response, case.status, case.code, case.phrase)
    after = snapshot(client, job_id)
    assert after == before
    assert (after[0]["round"], after[0]["reports_this_round"]) == (2, 1)


def test_chunked_body_over_the_limit_is_refused(client, open_round):
    chunk = b" " * 4096

    def chunks() -> Iterator[bytes]:
        yield from [chunk] * (MAX_BODY_BYTES // len(chunk) + 2)

    before = snapshot(client, open_round["job"])
    response = client.post(
        f"/v1/jobs/{open_round['job']}/rounds/2/reports",
        content=chunks(),
        headers={**bearer(open_round["token"]), "Content-Type": "application/json"},
    )
    assert_error(response, 413, "body_too_large", f"exceeds {MAX_BODY_BYTES} bytes")
    assert snapshot(client, open_round["job"]) == before


def test_scoring_rounds_refuse_updates_and_malformed_scores(client):
    """The start round wants scores of every candidate start; the final round one loss."""
    job_id, tokens = new_job(client, prompt={"starts": ["preamble", "vocabulary"]}, federation={"rounds": 1})
    before = snapshot(client, job_id)
    update = party_report("a", 1) | {"round": 0}
    assert_error(post_report(client, job_id, tokens["a"], update), 422, "invalid_report", "round 0 is a start round")
    one_loss = {"kind": "scores", "round": 0, "losses": [0.5], "n_examples": 16}
    assert_error(post_report(client, job_id, tokens["a"], one_loss), 422, "invalid_report", "scores 2 candidates")
    not_numbers = one_loss | {"losses": ["low", 0.5]}
    assert_error(post_report(client, job_id, tokens["a"], not_numbers), 422, "invalid_request", "scores.losses.0")
    negative = one_loss | {"losses": [0.5, -1.0]}
    assert_error(post_report(client, job_id, tokens["a"], negative), 422, "invalid_report", "every loss")
    assert snapshot(client, job_id) == before
    play_round(client, job_id, tokens, 0)
    play_round(client, job_id, tokens, 1)
    assert job_view(client, job_id)["kind"] == "final"
    final_update = party_report("a", 1) | {"round": 2}
    assert_error(post_report(client, job_id, tokens["a"], final_update), 422, "invalid_report", "round 2 is a final")


def spec_with(key: str, value: object) -> dict:
    """tiny_spec() with one dotted key set to ``value`` (or removed, for None), unvalidated."""
    spec = tiny_spec()
    *sections, name = key.split(".")
    target = spec
    for section in sections:
        target = target[section]
    if value is None:
        del target[name]
    else:
        target[name] = value
    return spec


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
        spec_with("federation.quorum", 3),
        422,
        "invalid_request",
        "quorum (3) cannot exceed parties_per_round (2)",
    ),
    BadAdminRequest("unknown_task", "POST", "/v1/jobs", spec_with("task", "nope"), 422, "invalid_request", "sst2"),
    BadAdminRequest(
        "task_file_missing_keys",
        "POST",
        "/v1/jobs",
        spec_with("task", {"name": "x"}),
        422,
        "invalid_request",
        "missing",
    ),
    BadAdminRequest(
        "zero_rounds",
        "POST",
        "/v1/jobs",
        spec_with("federation.rounds", 0),
        422,
        "invalid_request",
        "federation.rounds",
    ),
    BadAdminRequest(
        "rounds_string",
        "POST",
        "/v1/jobs",
        spec_with("federation.rounds", "3"),
        422,
        "invalid_request",
        "valid integer",
    ),
    BadAdminRequest(
        "unknown_aggregator",
        "POST",
        "/v1/jobs",
        spec_with("federation.aggregator", "sum"),
        422,
        "invalid_request",
        "fedavg",
    ),
    BadAdminRequest(
        "step_nan", "POST", "/v1/jobs", spec_with("search.step", math.nan), 422, "invalid_request", "finite number"
    ),
    BadAdminRequest(
        "zero_deadline",
        "POST",
        "/v1/jobs",
        spec_with("federation.deadline_s", 0),
        422,
        "invalid_request",
        "federation.deadline_s",
    ),
    BadAdminRequest("unknown_spec_field", "POST", "/v1/jobs", spec_with("extra", 1), 422, "invalid_request", "extra"),
    BadAdminRequest(
        "unknown_section_key", "POST", "/v1/jobs", spec_with("search.sigma0", 1.0), 422, "invalid_request", "sigma0"
    ),
    BadAdminRequest(
        "unknown_start", "POST", "/v1/jobs", spec_with("prompt.starts", ["nope"]), 422, "invalid_request", "nope"
    ),
    BadAdminRequest(
        "unpinned_model", "POST", "/v1/jobs", spec_with("model", None), 422, "unpinned_spec", "fedbpt job create"
    ),
    BadAdminRequest(
        "unpinned_projection",
        "POST",
        "/v1/jobs",
        spec_with("prompt.fingerprint", None),
        422,
        "unpinned_spec",
        "fedbpt job create",
    ),
    BadAdminRequest("spec_not_an_object", "POST", "/v1/jobs", "[]", 422, "invalid_request", "object"),
    BadAdminRequest("malformed_spec_json", "POST", "/v1/jobs", '{"seed": ', 422, "invalid_request", "not valid JSON"),
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
    BadAdminRequest("prompt_which", "GET", "/v1/jobs/{job}/prompt?which=final", None, 422, "invalid_request", "last"),
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


def test_the_openapi_schema_documents_the_job_spec(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    body = client.get("/openapi.json").json()["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/JobSpec"}
    assert schemas["SearchSpec"]["properties"]["population"]["minimum"] == 2
    assert {"SearchReport", "ScoresReport"} <= set(schemas)


# duplicates and stale reports


def test_identical_resend_is_idempotent_and_a_different_one_conflicts(client):
    job_id, tokens = new_job(client, parties=("a", "b", "c"), federation={"parties": 3, "parties_per_round": 2})
    closed_before = counter(client, "fedbpt_rounds_closed_total", reason="parties_per_round")
    first = post_report(client, job_id, tokens["a"], party_report("a", 1))
    assert first.status_code == 201 and first.json()["duplicate"] is False

    resent = post_report(client, job_id, tokens["a"], party_report("a", 1))
    assert resent.status_code == 200 and resent.json()["duplicate"] is True
    assert job_view(client, job_id)["reports_this_round"] == 1

    before = snapshot(client, job_id)
    different = post_report(client, job_id, tokens["a"], party_report("a", 1, fitness=0.01))
    assert_error(different, 409, "conflicting_report", "one report per party per round")
    assert snapshot(client, job_id) == before

    assert submit(client, job_id, tokens, "b", 1)["round_closed"] is True
    after_close = snapshot(client, job_id)
    resent_after_close = post_report(client, job_id, tokens["b"], party_report("b", 1))
    assert resent_after_close.status_code == 200
    assert resent_after_close.json() == {**resent_after_close.json(), "duplicate": True, "round_closed": False}
    assert snapshot(client, job_id) == after_close
    assert [record["round"] for record in after_close[1]["rounds"]] == [1]
    assert counter(client, "fedbpt_rounds_closed_total", reason="parties_per_round") == closed_before + 1

    late = post_report(client, job_id, tokens["c"], party_report("c", 1))
    assert_error(late, 409, "stale_round", "round 1 is closed")
    assert snapshot(client, job_id) == after_close


def test_reports_after_the_job_ends_are_refused(client):
    job_id, tokens = new_job(client, federation={"rounds": 1})
    play_round(client, job_id, tokens, 1)
    assert job_view(client, job_id)["kind"] == "final"
    play_round(client, job_id, tokens, 2)
    assert job_view(client, job_id)["status"] == "finished"
    assert [record["kind"] for record in history(client, job_id)["rounds"]] == ["search", "final"]
    late = post_report(client, job_id, tokens["a"], party_report("a", 3))
    assert_error(late, 409, "job_not_running", "finished")

    other_id, other_tokens = new_job(client)
    assert client.post(f"/v1/jobs/{other_id}/cancel", headers=admin_headers()).json()["status"] == "cancelled"
    refused = post_report(client, other_id, other_tokens["a"], party_report("a", 1))
    assert_error(refused, 409, "job_not_running", "cancelled")
    cancel_again = client.post(f"/v1/jobs/{other_id}/cancel", headers=admin_headers())
    assert_error(cancel_again, 409, "job_not_running", "already cancelled")


def test_concurrent_reports_close_the_round_once(client):
    parties = ("a", "b", "c", "d")
    job_id, tokens = new_job(client, parties=parties, federation={"parties": 4})
    requests = [(party, party_report(party, 1)) for party in parties for _ in range(3)]
    with ThreadPoolExecutor(len(requests)) as pool:
        responses = list(pool.map(lambda item: post_report(client, job_id, tokens[item[0]], item[1]), requests))
    assert sorted(response.status_code for response in responses) == [200] * 8 + [201] * 4
    assert [response.json()["round_closed"] for response in responses].count(True) == 1
    [record] = history(client, job_id)["rounds"]
    assert record["parties"] == list(parties)
    assert job_view(client, job_id)["round"] == 2


def test_a_job_logs_structured_lines_and_writes_its_event_log(server, client):
    job_id, tokens = new_job(client)
    play_job(client, job_id, tokens)
    events = [json.loads(line) for line in (server.database.parent / "fedbpt-events" / f"{job_id}.events.jsonl").open()]
    kinds = [event["event"] for event in events]
    rounds_played = SPEC.federation.rounds + 1  # the search rounds and the final scoring round
    assert kinds == ["job_created", "party_added", "party_added"] + ["round", "round_opened"] * (rounds_played - 1) + [
        "round",
        "job_ended",
    ]
    first = events[3]
    assert (first["round"], first["kind"], first["parties"], first["reason"]) == (1, "search", 2, "parties_per_round")
    assert first["loss"] > 0 and first["bytes_sent"] > 0 and first["bytes_received"] > 0 and first["seconds"] >= 0
    assert events[0]["spec"] == job_view(client, job_id)["spec"] and events[0]["packages"]["fedbpt"]
    lines = [line for line in server.log.read_text().splitlines() if f"job={job_id}" in line]
    assert any("event=job_created" in line and "task=sst2" in line for line in lines)
    assert any(
        line.endswith("event=job_ended job=" + job_id + " status=finished best_round=" + str(events[-1]["best_round"]))
        for line in lines
    )
    assert sum("event=round " in line for line in lines) == rounds_played


def test_evaluations_are_stored_once_per_prompt_round_and_pooled_in_the_history(client):
    job_id, tokens = new_job(client)
    path = f"/v1/jobs/{job_id}/rounds/{{}}/evaluations"
    report = {"accuracy": 0.75, "n_examples": 20}
    assert_error(client.post(path.format(1), json=report, headers=bearer(tokens["a"])), 409, "future_round")
    beyond = client.post(path.format(SPEC.federation.rounds + 1), json=report, headers=bearer(tokens["a"]))
    assert_error(beyond, 422, "no_such_prompt", "last prompt is the one after round 3")
    too_high = client.post(path.format(0), json={**report, "accuracy": 1.5}, headers=bearer(tokens["a"]))
    assert_error(too_high, 422, "invalid_request", "accuracy")
    for bad_round in (-1, -(2**63) - 1, 2**63):  # once stored as round -1, or a 500 from SQLite
        refused = client.post(path.format(bad_round), json=report, headers=bearer(tokens["a"]))
        assert_error(refused, 422, "invalid_request", "round_number")
    assert client.post(path.format(0), json=report, headers=bearer(tokens["a"])).status_code == 201
    assert client.post(path.format(0), json=report, headers=bearer(tokens["a"])).status_code == 200
    changed_report = client.post(path.format(0), json={**report, "accuracy": 0.5}, headers=bearer(tokens["a"]))
    assert_error(changed_report, 409, "conflicting_evaluation", "prompt after round 0")
    other = {"accuracy": 0.5, "n_examples": 60}
    assert client.post(path.format(0), json=other, headers=bearer(tokens["b"])).status_code == 201
    assert history(client, job_id)["accuracy"] == [{"round": 0, "accuracy": 0.5625, "n_examples": 80, "parties": 2}]


def test_round_answer_follows_reports_round_closing_and_cancellation(client):
    """The server keeps each job's round answer in memory: it must change with every committed change."""
    job_id, tokens = new_job(client)
    first = fetch_round(client, job_id, tokens["a"])
    keys = ["job", "status", "round", "kind", "mean", "sigma", "start", "mean_round", "deadline", "submitted"]
    assert list(first) == keys
    assert (first["round"], first["kind"], first["status"], first["submitted"]) == (1, "search", "running", False)

    submit(client, job_id, tokens, "a", 1)
    assert fetch_round(client, job_id, tokens["a"])["submitted"] is True
    assert fetch_round(client, job_id, tokens["b"]) == first

    submit(client, job_id, tokens, "b", 1)
    second = fetch_round(client, job_id, tokens["a"])
    assert (second["round"], second["mean_round"], second["submitted"]) == (2, 1, False)
    last = LearnedPrompt.from_dict(prompt_of(client, job_id, "last"))
    assert last.round == 1 and np.array_equal(decode_vector(second["mean"], "float16"), last.z)
    assert second["mean"] != first["mean"] and second["deadline"] >= first["deadline"]

    submit(client, job_id, tokens, "a", 2)
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=admin_headers()).status_code == 200
    cancelled = fetch_round(client, job_id, tokens["a"])
    assert {key: cancelled[key] for key in ("status", "round", "deadline", "submitted")} == {
        "status": "cancelled",
        "round": 2,
        "deadline": None,
        "submitted": True,
    }
    assert fetch_round(client, job_id, tokens["b"])["submitted"] is False


# the round kinds


START_LOSSES = {  # party: (examples, losses of preamble, instruction, vocabulary)
    "a": (10, [0.1, 0.9, 0.9]),  # a party with few examples that prefers the preamble
    "b": (30, [0.9, 0.5, 0.6]),
    "c": (60, [0.9, 0.6, 0.5]),
}


def start_report(party: str) -> dict:
    examples, losses = START_LOSSES[party]
    return {"kind": "scores", "round": 0, "losses": losses, "n_examples": examples}


def test_the_start_round_picks_the_example_weighted_best_start_across_a_server_kill(tmp_path):
    """Unweighted, the preamble would win (mean loss 0.63); weighted by examples, 'vocabulary' does (0.57)."""
    server = ServerProcess(tmp_path / "start.db")
    starts = ["preamble", "instruction", "vocabulary"]
    try:
        server.start()
        with client_for(server) as client:
            sections = {"prompt": {"starts": starts}, "federation": {"parties": 3, "rounds": 1}}
            job_id, tokens = new_job(client, parties=("a", "b", "c"), **sections)
            opening = fetch_round(client, job_id, tokens["a"])
            assert (opening["round"], opening["kind"], opening["start"]) == (0, "start", "")
            for party in "ab":
                assert post_report(client, job_id, tokens[party], start_report(party)).status_code == 201
            before = snapshot(client, job_id)
        server.kill()
        server.start()
        with client_for(server) as client:
            assert snapshot(client, job_id) == before
            assert (before[0]["round"], before[0]["reports_this_round"], before[1]["rounds"]) == (0, 2, [])
            assert post_report(client, job_id, tokens["b"], start_report("b")).json()["duplicate"] is True
            assert post_report(client, job_id, tokens["c"], start_report("c")).json()["round_closed"] is True
            searching = fetch_round(client, job_id, tokens["a"])
            assert (searching["round"], searching["kind"], searching["start"]) == (1, "search", "vocabulary")
            record = history(client, job_id)["rounds"][0]
            assert (record["round"], record["kind"], record["start"], record["best_round"]) == (
                0,
                "start",
                "vocabulary",
                0,
            )
            assert record["start_losses"] == pytest.approx({"preamble": 0.82, "instruction": 0.6, "vocabulary": 0.57})
            assert history(client, job_id)["start"] == "vocabulary"
        shown = fedbpt(server, "job", "history", job_id)
        assert "round   0  start" in shown and "chose 'vocabulary'" in shown and "vocabulary 0.5700" in shown
    finally:
        server.stop()


def test_the_job_returns_its_best_prompt_and_backtracks_after_a_rise(server, client, tmp_path):
    """Pooled losses of the prompts after rounds 0, 1, 2, 1 (again) and 4: 0.6, 0.5, 0.7, 0.5, 0.8. Round 3 saw the
    rise, so round 4 searches again from the prompt after round 1 with half the step; the job returns that prompt."""
    job_id, tokens = new_job(client, federation={"rounds": 4})
    messages = {}
    for round_number, loss in [(1, 0.6), (2, 0.5), (3, 0.7), (4, 0.5), (5, 0.8)]:
        messages[round_number] = fetch_round(client, job_id, tokens["a"])
        changes = {"losses": [loss]} if messages[round_number]["kind"] == "final" else {"loss": loss}
        play_round(client, job_id, tokens, round_number, **changes)
    assert job_view(client, job_id)["status"] == "finished"

    restarted = messages[4]
    assert (restarted["kind"], restarted["mean_round"], restarted["mean"]) == ("search", 1, messages[2]["mean"])
    assert restarted["sigma"] == max(messages[3]["sigma"] * SPEC.search.backtrack, SPEC.search.step_floor)
    assert restarted["sigma"] < messages[3]["sigma"]
    records = {record["round"]: record for record in history(client, job_id)["rounds"]}
    assert [records[r]["backtracked"] for r in (1, 2, 3, 4)] == [False, False, True, False]
    assert [records[r]["best_round"] for r in (1, 2, 3, 4, 5)] == [0, 1, 1, 1, 1]

    best_file, last_file = tmp_path / "best.json", tmp_path / "last.json"
    shown = fedbpt(server, "job", "prompt", job_id, "--which", "best", "--out", str(best_file))
    assert "after round 1, pooled loss 0.5000" in shown
    fedbpt(server, "job", "prompt", job_id, "--which", "last", "--out", str(last_file))
    best, last = LearnedPrompt.load(best_file), LearnedPrompt.load(last_file)
    assert (best.job, best.round, best.loss) == (job_id, 1, 0.5)
    assert np.array_equal(best.z, decode_vector(messages[2]["mean"], "float16"))
    assert (last.round, last.loss) == (4, 0.8)
    assert "backtracked to the best" in fedbpt(server, "job", "history", job_id)


def test_a_party_sends_and_receives_at_most_4200_bytes_of_json_per_search_round(client):
    sections = {"prompt": {"dim": 500}, "search": {"iterations": 8}}  # the papers' 8 local iterations: 8 sigmas
    spec = from_dict(tiny_spec(**sections))
    assert (spec.prompt.dim, spec.wire) == (500, "float16")
    job_id, tokens = new_job(client, **sections)
    received = client.get(f"/v1/jobs/{job_id}/round", headers=bearer(tokens["a"]))
    state = rounds.party_state(spec, received.json())
    rng = np.random.default_rng(0)
    mean = on_wire(state.mean + state.sigma * rng.standard_normal(spec.prompt.dim), spec.wire)
    sigmas = tuple(float(sigma) for sigma in state.sigma * rng.uniform(0.8, 1.0, spec.search.iterations))
    update = Update(  # numbers at full precision, as a party's search gives them
        party="a",
        round=state.round,
        loss=0.6931471805599453,
        mean=mean,
        sigmas=sigmas,
        sigma=sigmas[-1],
        fitness=0.8123456789012345,
        n_examples=16,
        evaluations=spec.search.population * spec.search.iterations + 1,
        seconds=23.456789012345678,
    )
    sent = post_report(client, job_id, tokens["a"], rounds.report_body(spec, update))
    assert sent.status_code == 201, sent.text
    size = len(received.content) + len(sent.request.content)
    parts = f"{len(received.content)} B received + {len(sent.request.content)} B sent"
    assert size <= 4200, f"a search round's JSON is {size} bytes ({parts}), over the 4,200-byte budget"


# durability and determinism


def test_tokens_and_round_answers_are_rebuilt_from_the_store_after_a_restart(tmp_path):
    server = ServerProcess(tmp_path / "restarted.db")
    try:
        server.start()
        with client_for(server) as client:
            job_id, tokens = new_job(client)
            submit(client, job_id, tokens, "a", 1)
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


def finished_prompts(client: httpx.Client, job_id: str) -> list[dict]:
    """The finished job's best and last prompts, without the job's id."""
    assert job_view(client, job_id)["status"] == "finished"
    return [prompt_of(client, job_id, which) | {"job": ""} for which in ("best", "last")]


def uninterrupted_prompts(server: ServerProcess) -> list[dict]:
    server.start()
    with client_for(server) as client:
        job_id, tokens = new_job(client)
        play_job(client, job_id, tokens)
        return finished_prompts(client, job_id)


def test_sigkill_mid_round_loses_no_accepted_report_and_ends_at_the_same_prompts(tmp_path):
    server = ServerProcess(tmp_path / "crashed.db")
    try:
        server.start()
        with client_for(server) as client:
            job_id, tokens = new_job(client)
            play_round(client, job_id, tokens, 1)
            submit(client, job_id, tokens, "a", 2)
            before = snapshot(client, job_id)
        server.kill()
        server.start()
        with client_for(server) as client:
            assert snapshot(client, job_id) == before
            assert (before[0]["round"], before[0]["reports_this_round"], len(before[1]["rounds"])) == (2, 1, 1)
            resent = post_report(client, job_id, tokens["a"], party_report("a", 2))
            assert resent.status_code == 200 and resent.json()["duplicate"] is True
            submit(client, job_id, tokens, "b", 2)
            play_job(client, job_id, tokens)
            crashed = finished_prompts(client, job_id)
    finally:
        server.stop()
    clean = ServerProcess(tmp_path / "clean.db")
    try:
        assert crashed == uninterrupted_prompts(clean)
    finally:
        clean.stop()


# deadlines


def test_round_closes_at_the_deadline_when_a_party_disappears(client):
    sections = {"federation": {"parties": 3, "quorum": 2, "deadline_s": 1.5}}
    job_id, tokens = new_job(client, parties=("a", "b", "c"), **sections)
    deadlines_before = counter(client, "fedbpt_rounds_closed_total", reason="deadline")
    submit(client, job_id, tokens, "a", 1)
    assert submit(client, job_id, tokens, "b", 1)["round_closed"] is False
    assert (job_view(client, job_id)["round"], job_view(client, job_id)["reports_this_round"]) == (1, 2)

    assert wait_for_round(client, job_id, tokens["a"], after=1)["round"] == 2
    [record] = history(client, job_id)["rounds"]
    assert (record["round"], record["reason"], record["parties"]) == (1, "deadline", ["a", "b"])
    assert record["seconds"] >= 1.5
    assert counter(client, "fedbpt_rounds_closed_total", reason="deadline") == deadlines_before + 1

    late = post_report(client, job_id, tokens["c"], party_report("c", 1))
    assert_error(late, 409, "stale_round", "the open round is 2")
    assert job_view(client, job_id)["reports_this_round"] == 0


# long-poll


def test_long_poll_returns_promptly_when_the_round_closes(client):
    job_id, tokens = new_job(client)
    submit(client, job_id, tokens, "a", 1)
    answer: dict = {}

    def poll() -> None:
        answer["info"] = wait_for_round(client, job_id, tokens["a"], after=1, wait=10)
        answer["at"] = time.monotonic()

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.5)
    assert poller.is_alive(), "the long-poll answered before the round changed"
    closed_at = time.monotonic()
    submit(client, job_id, tokens, "b", 1)
    poller.join(10)
    assert not poller.is_alive()
    assert (answer["info"]["round"], answer["info"]["submitted"]) == (2, False)
    assert answer["at"] - closed_at < 1.5


def test_long_poll_without_change_returns_after_wait(client):
    job_id, tokens = new_job(client)
    started = time.monotonic()
    info = wait_for_round(client, job_id, tokens["a"], after=1, wait=1)
    assert 0.9 <= time.monotonic() - started < 3
    assert (info["round"], info["status"]) == (1, "running")


def test_long_poll_returns_when_the_job_is_cancelled(client):
    job_id, tokens = new_job(client)
    timer = threading.Timer(0.5, lambda: client.post(f"/v1/jobs/{job_id}/cancel", headers=admin_headers()))
    started = time.monotonic()
    timer.start()
    info = wait_for_round(client, job_id, tokens["a"], after=1, wait=10)
    timer.join()
    assert time.monotonic() - started < 3
    assert (info["status"], info["deadline"]) == ("cancelled", None)


# operations


def test_metrics_count_accepted_and_rejected_reports(client):
    job_id, tokens = new_job(client)
    outcomes = ("accepted", "duplicate", "rejected_invalid", "rejected_conflict", "rejected_future_round")
    before = {outcome: counter(client, "fedbpt_reports_total", outcome=outcome) for outcome in outcomes}
    submit(client, job_id, tokens, "a", 1)
    post_report(client, job_id, tokens["a"], party_report("a", 1))
    post_report(client, job_id, tokens["a"], party_report("a", 1, fitness=0.0))
    post_report(client, job_id, tokens["b"], party_report("b", 1, sigma=-1.0))
    post_report(client, job_id, tokens["b"], party_report("b", 2))
    after = {outcome: counter(client, "fedbpt_reports_total", outcome=outcome) for outcome in outcomes}
    assert {outcome: after[outcome] - before[outcome] for outcome in outcomes} == dict.fromkeys(outcomes, 1.0)
    assert counter(client, "fedbpt_request_seconds_count", method="GET", route="/v1/jobs/{job_id}", status="200") > 0


@pytest.mark.parametrize("path, expected", [("/healthz", "ok"), ("/readyz", "ready")])
def test_health_and_readiness(client, path, expected):
    response = client.get(path)
    assert response.status_code == 200 and response.json() == {"status": expected}


def test_docs_and_unknown_routes(client):
    assert client.get("/docs").status_code == 200
    assert "/v1/jobs/{job_id}/rounds/{round_number}/reports" in client.get("/openapi.json").json()["paths"]
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.delete("/v1/jobs", headers=admin_headers()), 405, "method_not_allowed")


def test_a_server_started_without_an_admin_token_says_so_in_one_line(tmp_path):
    env = {**os.environ, "FEDBPT_ADMIN_TOKEN": "short", "FEDBPT_DB": str(tmp_path / "db")}
    command = [sys.executable, "-m", "uvicorn", "server.app:app", "--port", "0"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "ERROR:    error: FEDBPT_ADMIN_TOKEN must be set to a secret of at least 16 characters" in result.stderr


def test_a_cancelled_job_takes_no_new_parties(client):
    job_id, _ = new_job(client)
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=admin_headers()).status_code == 200
    for route in ("parties", "enrollments"):
        refused = client.post(f"/v1/jobs/{job_id}/{route}", json={"name": "late"}, headers=admin_headers())
        assert_error(refused, 409, "job_not_running", "it takes no new parties")


def test_a_private_job_reports_its_epsilon_and_one_over_its_budget_is_refused(client):
    over = client.post(
        "/v1/jobs", json=tiny_spec(privacy={"clip": 1.0, "noise": 0.5, "epsilon": 1.0}), headers=admin_headers()
    )
    assert_error(over, 422, "over_privacy_budget", "over its budget 1: use at most 0 rounds")
    job_id, tokens = new_job(client, privacy={"clip": 1.0, "noise": 1.0})
    play_round(client, job_id, tokens, 1)
    spent = history(client, job_id)["rounds"][0]["epsilon"]
    assert spent > 0
    assert counter(client, "fedbpt_privacy_epsilon", job=job_id) == pytest.approx(spent)

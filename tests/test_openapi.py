"""The OpenAPI spec tells the truth: schemathesis fuzzes a live server (uvicorn in a real process, with real jobs
created over HTTP) with every check it has, and a few direct tests pin what the spec promises about refusals.

Schemathesis runs as its command line, all four phases (examples, coverage, fuzzing, stateful), and its JSON
report is read. Its pytest integration cannot test this server: a schema loaded when the module is imported
cannot know the job and the tokens that the server makes, and the loader for a fixture's schema
(``schemathesis.pytest.from_fixture``, schemathesis 4.32) fails on pytest 9.2, which removed the ``_nodeid``
it sets. ``scripts/fuzz_api.sh`` runs a longer pass of the same configuration.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from serving import ADMIN_TOKEN, ServerProcess, admin_headers, tiny_spec

EXAMPLES = 8  # per operation and phase: about 1,300 cases, 12 s on two cores

# The tags of the routes each kind of token is for. A fuzz runs once per kind with its bearer token: an
# Authorization header per operation would do in one run, but schemathesis 4.32's stateful phase takes such a
# header for one it negated and reports a valid request as "schema-violating request accepted".
TOKEN_KINDS = {"admin": "^jobs$", "party": "^(rounds|results|ops)$"}

# The fuzz's schemathesis.toml; {fields} are the live server's. Every check is enabled unless excluded here.
CONFIG = """
seed = {seed}

[generation]
max-examples = {examples}

[auth.openapi.HTTPBearer]
bearer = "{token}"

# Every route reaches the one job: random job ids would only meet 403 and 404.
[parameters]
job_id = "{job}"

# Cancelling the one job would leave every party route nothing to answer but 409: cancel another.
[[operations]]
include-path = "/v1/jobs/{{job_id}}/cancel"
parameters = {{ job_id = "{job_to_cancel}" }}

# Revoking must not hit the fuzzing party's token: revoke a party kept for it.
[[operations]]
include-path = "/v1/jobs/{{job_id}}/parties/{{name}}/token"
parameters = {{ name = "revokee" }}

# Excluded: positive_data_acceptance (a schema-valid request gets 2xx, or 401-404, 409, 429) where a valid
# request is refused by rules JSON Schema cannot state:
# - a job spec's cross-field rules (step_floor <= step, quorum <= parties_per_round <= parties, initial has
#   prompt.dim numbers) and its pinning (model.identity and prompt.fingerprint set);
[[operations]]
include-path = "/v1/jobs"
include-method = "POST"
checks.positive_data_acceptance.enabled = false

# - a report must fit the job and its open round, which is state: the body's round is the path's, its kind is the
#   round's, its mean has the job's prompt.dim numbers (see the route's description);
[[operations]]
include-path = "/v1/jobs/{{job_id}}/rounds/{{round_number}}/reports"
checks.positive_data_acceptance.enabled = false

# - an evaluation's round is at most the job's federation.rounds.
[[operations]]
include-path = "/v1/jobs/{{job_id}}/rounds/{{round_number}}/evaluations"
checks.positive_data_acceptance.enabled = false
"""


@dataclass(frozen=True)
class Fuzzed:
    cases: int
    failures: int  # unique failures, and cases that errored
    unauthenticated: list[str]  # operations that answered nothing but 401 and 403: the fuzz did not reach them
    output: str  # schemathesis's, which shows each failure with a curl command that reproduces it


@dataclass(frozen=True)
class LiveAPI:
    server: ServerProcess
    job: str
    party_token: str

    def fuzz(self, examples: int, seed: int, folder: Path) -> Fuzzed:
        """Run schemathesis over this server with ``CONFIG``, once per kind of token (its files go in ``folder``)."""
        with httpx.Client(base_url=self.server.url, headers=admin_headers()) as client:
            job_to_cancel = client.post("/v1/jobs", json=tiny_spec()).raise_for_status().json()["id"]
        settings = {"seed": seed, "examples": examples, "job": self.job, "job_to_cancel": job_to_cancel}
        tokens = {"admin": ADMIN_TOKEN, "party": self.party_token}
        runs = [
            schemathesis(self.server.url, tags, CONFIG.format(token=tokens[kind], **settings), folder / kind)
            for kind, tags in TOKEN_KINDS.items()
        ]
        return Fuzzed(
            cases=sum(report["test_cases"]["generated"] for report, _ in runs),
            failures=sum(
                report["test_cases"]["unique_failures"] + report["test_cases"]["errored"] for report, _ in runs
            ),
            unauthenticated=[operation for report, _ in runs for operation in report["warnings"]["missing_auth"]],
            output="\n".join(output for _, output in runs),
        )


def schemathesis(url: str, tags: str, config: str, folder: Path) -> tuple[dict, str]:
    """Run schemathesis's command line over the server's routes whose tags match; its JSON report and output."""
    folder.mkdir()
    (folder / "schemathesis.toml").write_text(config)
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", "schemathesis.toml", "run"]
    command += [
        "--include-tag-regex",
        tags,
        "--report",
        "json",
        "--report-json-path",
        "report.json",
        f"{url}/openapi.json",
    ]
    run = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    assert (folder / "report.json").exists(), run.stdout + run.stderr
    return json.loads((folder / "report.json").read_text()), run.stdout + run.stderr


@contextlib.contextmanager
def live_api(database: Path) -> Iterator[LiveAPI]:
    """A server with one job, its fuzzing party and a party to revoke. Long-polls answer at once, and the fuzz's
    many failed authentications never block its address."""
    server = ServerProcess(database, env={"FEDBPT_MAX_WAIT_S": "0", "FEDBPT_AUTH_FAILURES": str(10**9)}).start()
    try:
        with httpx.Client(base_url=server.url, headers=admin_headers()) as client:
            job = client.post("/v1/jobs", json=tiny_spec()).raise_for_status().json()["id"]
            party = client.post(f"/v1/jobs/{job}/parties", json={"name": "fuzzer"}).raise_for_status().json()
            client.post(f"/v1/jobs/{job}/parties", json={"name": "revokee"}).raise_for_status()
        yield LiveAPI(server, job, party["token"])
    finally:
        server.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[LiveAPI]:
    with live_api(tmp_path_factory.mktemp("openapi") / "fedbpt.db") as api:
        yield api


@pytest.fixture(scope="module")
def client(live) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.server.url) as http:
        yield http


def test_the_server_answers_as_its_openapi_spec_says(live, tmp_path):
    fuzzed = live.fuzz(EXAMPLES, seed=42, folder=tmp_path)
    assert fuzzed.failures == 0 and fuzzed.cases > 500, fuzzed.output
    assert not fuzzed.unauthenticated, fuzzed.output


def test_the_spec_documents_every_refusal_in_the_error_shape(client):
    spec = client.get("/openapi.json").json()
    assert not {"HTTPValidationError", "ValidationError"} & set(spec["components"]["schemas"])
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]


@pytest.mark.parametrize(
    "body, message",
    [
        (b'{"secret": "\xff"}', "the body is not valid JSON: it is not UTF-8 text (invalid byte at position 12)"),
        (b"[" * 100_000, "the body is not valid JSON that can be read: its arrays or objects nest too deeply"),
        (b'{"secret": ', "the body is not valid JSON: Expecting value at character 11"),
    ],
    ids=["invalid_utf8", "deep_nesting", "truncated"],
)
def test_a_body_that_does_not_parse_is_a_422_in_the_error_shape(client, body, message):
    response = client.post("/v1/enroll", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json() == {"error": {"status": 422, "code": "invalid_request", "message": message}}


@pytest.mark.parametrize(
    "method, path, allowed",
    [("OPTIONS", "/v1/jobs", "GET, HEAD, POST"), ("TRACE", "/healthz", "GET, HEAD"), ("GET", "/v1/enroll", "POST")],
)
def test_a_405_names_every_method_of_the_path(client, method, path, allowed):
    response = client.request(method, path)
    assert response.status_code == 405, response.text
    assert response.headers["Allow"] == allowed
    assert response.json()["error"]["code"] == "method_not_allowed"

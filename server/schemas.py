"""The API's schema: pydantic models that are both its documentation and its validation.

A job's spec is the core's ``fedbpt.spec.JobSpec`` itself. Its dataclasses are strict, which refuses the plain
dicts FastAPI validates request and response bodies from, so ``Spec`` parses them with ``fedbpt.spec.from_dict``
(the same one-line errors naming the dotted key as everywhere else); the OpenAPI schema is JobSpec's, with its
constraints. A report is what ``fedbpt.rounds.report_body`` makes: a search round's update or a scoring round's
losses, told apart by ``kind``.

The rules the core checks in every report (``fedbpt.aggregate``: a step is positive and at most 1000, a loss is in
[0, 1e6], a vector is base64) are stated in the schema with ``json_schema_extra`` only, not checked by pydantic: the
core refuses them with its own message and counts the rejected report. What depends on the job (a vector's length
is its prompt.dim) or on the open round (its number and kind) is described but cannot be a schema.

Every refusal has one shape, ``Error``; ``refusals`` documents the ones a route can answer.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue

from fedbpt.aggregate import MAX_LOSS, MAX_SIGMA
from fedbpt.objective import STARTS
from fedbpt.rounds import KINDS
from fedbpt.spec import LAST_ROUND, MAX_PARTIES, JobSpec, from_dict
from fedbpt.tasks import BUILTIN_TASKS

Status = Literal["running", "finished", "cancelled"]


def _spec(value: Any) -> JobSpec:
    return value if isinstance(value, JobSpec) else from_dict(value)


class _SpecRules:
    """States in JobSpec's JSON schema two rules that ``fedbpt.spec`` checks in validators: a task is a built-in
    one, a task file's name or its content, and starts are distinct names of known starting prompts."""

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        reference = handler(core_schema)
        spec = handler.resolve_ref_schema(reference)
        a_task_name = {"type": "string", "anyOf": [{"enum": list(BUILTIN_TASKS)}, {"pattern": r"\.(toml|json)$"}]}
        spec["properties"]["task"]["anyOf"][0] = a_task_name
        starts = handler.resolve_ref_schema(spec["properties"]["prompt"])["properties"]["starts"]
        starts.update(items={"type": "string", "enum": list(STARTS)}, uniqueItems=True)
        return reference


Spec = Annotated[JobSpec, BeforeValidator(_spec), _SpecRules]


class Strict(BaseModel):
    """No unknown fields, no NaN or infinity, no silent string-to-number coercion."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


A_STEP = {"exclusiveMinimum": 0, "maximum": MAX_SIGMA}
A_LOSS = {"minimum": 0, "maximum": MAX_LOSS}
BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


class ErrorDetail(BaseModel):
    status: int = Field(description="the response's HTTP status")
    code: str = Field(description="the reason for programs: bad_token, unknown_job, stale_round, invalid_report, ...")
    message: str = Field(description="the reason for people: one line saying what is wrong and how to fix it")


class Error(BaseModel):
    """Every refusal, whatever its status (server/errors.py)."""

    error: ErrorDetail


REFUSALS = {
    401: "missing_token, bad_token, revoked_token: no bearer token, or one the server does not take",
    403: "admin_only, party_only, wrong_job: a token of the wrong kind, or of another job",
    404: "unknown_job: no job has this id; not_found: the path names no route",
    409: "the job's state refuses it now",
    408: "body_timeout: the body did not arrive within FEDBPT_BODY_TIMEOUT_S",
    413: "body_too_large: the body is over FEDBPT_MAX_BODY_BYTES",
    422: "invalid_request: a parameter or the body does not fit this schema, or the body is not JSON (not UTF-8, "
    "nested too deeply, cut short)",
    429: "too_many_failures: this address failed to authenticate too often; wait Retry-After seconds",
    503: "not_ready: the database is unavailable",
}


def refusals(*statuses: int, codes: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=``: each status it can refuse with, in the ``Error`` shape; ``codes`` describe a
    status with the route's own reasons instead of the general ones."""
    codes = codes or {}
    return {status: {"model": Error, "description": codes.get(status, REFUSALS[status])} for status in sorted(statuses)}


class Job(BaseModel):
    id: str
    status: Status
    round: int = Field(
        description="the open round: 0 chooses the start, then R search rounds (each followed by a rank round under "
        "robust 'cross'), then the final round scores the last prompt"
    )
    kind: Literal[KINDS]
    sigma: float
    spec: Spec
    parties: list[str]
    reports_this_round: int


class PartyIn(Strict):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")


class PartyToken(BaseModel):
    job: str
    party: str
    token: str = Field(description="shown once; the server keeps only its hash")


class Enrollment(BaseModel):
    job: str
    party: str
    secret: str = Field(description="redeem once at POST /v1/enroll; shown once")
    expires: float = Field(description="unix time after which it no longer works (FEDBPT_ENROLLMENT_TTL_S)")


class ViewerIn(Strict):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")


class Viewer(BaseModel):
    """A read-only dashboard login: every job's dashboard, nothing else."""

    name: str
    token: str = Field("", description="shown once, when the viewer is added; the server keeps only its hash")


class Revoked(BaseModel):
    """A party whose token (and unredeemed enrollment secrets) no longer work."""

    job: str
    party: str


class EnrollIn(Strict):
    secret: str = Field(min_length=1, max_length=200)


class Me(BaseModel):
    job: str
    party: str
    index: int


class RoundInfo(BaseModel):
    """The open round as ``fedbpt.rounds.round_message`` describes it, with the job's status and deadline."""

    job: str
    status: Status
    round: int
    kind: Literal[KINDS] = Field(
        description="start: score the starting prompts; search: search; rank: score the candidates; final: score"
    )
    mean: str = Field(description="the round's global prompt z, base64 little-endian floats of the job's wire")
    sigma: float = Field(description="the step the round's local searches start with")
    start: str = Field(description="the chosen starting prompt ('' while the start round is open)")
    mean_round: int = Field(description="the round after which mean was the global prompt")
    candidates: list[str] = Field(
        [], description="a rank round's means to score, in the job's wire precision like mean (other rounds: none)"
    )
    deadline: float | None = Field(description="unix time after which the round closes at quorum")
    submitted: bool = Field(description="whether this party's report for the round is in")


class SearchReport(Strict):
    """A search round's report: the party's update (``fedbpt.aggregate.Update``)."""

    kind: Literal["search"]
    round: int = Field(ge=0, le=LAST_ROUND)
    loss: float = Field(description="the party's training loss of the round's global prompt", json_schema_extra=A_LOSS)
    mean: str | list[float] = Field(
        description="the job's prompt.dim numbers: base64 little-endian floats of the job's wire, or a list",
        json_schema_extra={
            "anyOf": [{"type": "string", "pattern": BASE64}, {"type": "array", "items": {"type": "number"}}]
        },
    )
    sigmas: list[float] = Field(
        min_length=1,
        max_length=10_000,
        description="the step after each local iteration: at most the job's search.iterations",
        json_schema_extra={"items": {"type": "number", **A_STEP}},
    )
    sigma: float = Field(json_schema_extra=A_STEP)
    fitness: float = Field(json_schema_extra=A_LOSS)
    n_examples: int = Field(ge=1, le=100_000_000)
    evaluations: int = Field(0, ge=0, le=10**12)
    seconds: float = Field(0.0, ge=0, le=1e7)


class ScoresReport(Strict):
    """A scoring round's report: the party's training loss of each candidate (``fedbpt.aggregate.Scores``)."""

    kind: Literal["scores"]
    round: int = Field(ge=0, le=LAST_ROUND)
    losses: list[float] = Field(
        min_length=1,
        max_length=MAX_PARTIES,
        description="one per candidate: each starting prompt in the start round, each mean in a rank round, the "
        "last prompt in the final one",
        json_schema_extra={"items": {"type": "number", **A_LOSS}},
    )
    n_examples: int = Field(ge=1, le=100_000_000)
    seconds: float = Field(0.0, ge=0, le=1e7)


Report = Annotated[SearchReport | ScoresReport, Field(discriminator="kind")]


class Accepted(BaseModel):
    job: str
    party: str
    round: int
    duplicate: bool = Field(description="true when this exact report had already been accepted")
    round_closed: bool


class EvaluationIn(Strict):
    accuracy: float = Field(ge=0, le=1, description="held-out accuracy as the job scores (calibrated or raw)")
    n_examples: int = Field(ge=1, le=100_000_000)
    raw: float | None = Field(None, ge=0, le=1, description="the same prompt's accuracy without calibration")
    calibrated: float | None = Field(None, ge=0, le=1, description="the same prompt's accuracy, calibrated")
    zero_shot_raw: float | None = Field(None, ge=0, le=1, description="the bare template's (no soft prompt), raw")
    zero_shot_calibrated: float | None = Field(None, ge=0, le=1, description="the bare template's, calibrated")


class Prompt(BaseModel):
    """A prompt file (``fedbpt.job.LearnedPrompt``): z, its start and the job's spec rebuild it anywhere."""

    job: str
    round: int = Field(description="the prompt after this round")
    loss: float | None = Field(description="its pooled training loss, once a round has scored it")
    start: str
    z: str = Field(description="base64 little-endian float32")
    spec: Spec

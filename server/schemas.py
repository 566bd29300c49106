"""The API's schema: pydantic models that are both its documentation and its validation.

A job's spec is the core's ``fedbpt.spec.JobSpec`` itself. Its dataclasses are strict, which refuses the plain
dicts FastAPI validates request and response bodies from, so ``Spec`` parses them with ``fedbpt.spec.from_dict``
(the same one-line errors naming the dotted key as everywhere else); the OpenAPI schema is JobSpec's, with its
constraints. A report is what ``fedbpt.rounds.report_body`` makes: a search round's update or a scoring round's
losses, told apart by ``kind``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from fedbpt.objective import STARTS
from fedbpt.rounds import KINDS
from fedbpt.spec import LAST_ROUND, JobSpec, from_dict

Status = Literal["running", "finished", "cancelled"]


def _spec(value: Any) -> JobSpec:
    return value if isinstance(value, JobSpec) else from_dict(value)


Spec = Annotated[JobSpec, BeforeValidator(_spec)]


class Strict(BaseModel):
    """No unknown fields, no NaN or infinity, no silent string-to-number coercion."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class Job(BaseModel):
    id: str
    status: Status
    round: int = Field(description="the open round: 0 chooses the start, 1..R search, R + 1 scores the last prompt")
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
    kind: Literal[KINDS] = Field(description="start: score the starting prompts; search: search; final: score")
    mean: str = Field(description="the round's global prompt z, base64 little-endian floats of the job's wire")
    sigma: float = Field(description="the step the round's local searches start with")
    start: str = Field(description="the chosen starting prompt ('' while the start round is open)")
    mean_round: int = Field(description="the round after which mean was the global prompt")
    deadline: float | None = Field(description="unix time after which the round closes at quorum")
    submitted: bool = Field(description="whether this party's report for the round is in")


class SearchReport(Strict):
    """A search round's report: the party's update (``fedbpt.aggregate.Update``)."""

    kind: Literal["search"]
    round: int = Field(ge=0, le=LAST_ROUND)
    loss: float = Field(description="the party's training loss of the round's global prompt")
    mean: str | list[float] = Field(description="base64 little-endian floats of the job's wire, or a list")
    sigmas: list[float] = Field(min_length=1, max_length=10_000)
    sigma: float
    fitness: float
    n_examples: int = Field(ge=1, le=100_000_000)
    evaluations: int = Field(0, ge=0, le=10**12)
    seconds: float = Field(0.0, ge=0, le=1e7)


class ScoresReport(Strict):
    """A scoring round's report: the party's training loss of each candidate (``fedbpt.aggregate.Scores``)."""

    kind: Literal["scores"]
    round: int = Field(ge=0, le=LAST_ROUND)
    losses: list[float] = Field(min_length=1, max_length=len(STARTS))
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
    accuracy: float = Field(ge=0, le=1)
    n_examples: int = Field(ge=1, le=100_000_000)


class Prompt(BaseModel):
    """A prompt file (``fedbpt.job.LearnedPrompt``): z, its start and the job's spec rebuild it anywhere."""

    job: str
    round: int = Field(description="the prompt after this round")
    loss: float | None = Field(description="its pooled training loss, once a round has scored it")
    start: str
    z: str = Field(description="base64 little-endian float32")
    spec: Spec

"""The API's schema: pydantic models that are both its documentation and its validation."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedbpt.tasks import BUILTIN_TASKS, task_from_dict


class Strict(BaseModel):
    """No unknown fields, no NaN or infinity, no silent string-to-number coercion."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class ModelIdentity(Strict):
    name: str = Field(min_length=1, max_length=500, description="what a party passes to --model")
    identity: str = Field(min_length=1, max_length=500, description="the loaded model's identity")
    hidden_size: int = Field(gt=0, le=65536)


class ProjectionSpec(Strict):
    seed: int
    dim: int = Field(500, ge=1, le=100_000)
    n_tokens: int = Field(50, ge=1, le=4096)
    scale: float = Field(gt=0)
    fingerprint: str = Field(min_length=8, max_length=64)


class SearchSpec(Strict):
    population: int = Field(5, ge=2, le=10_000)
    iterations: int = Field(8, ge=1, le=10_000)
    loss: Literal["ce", "hinge"] = "ce"
    perturb_rate: float = Field(0.5, ge=0, lt=1)


class JobSpec(Strict):
    name: str = Field("", max_length=200)
    task: str | dict = Field(description="a built-in task name, or a task file's content (an object)")
    model: ModelIdentity
    projection: ProjectionSpec
    placement: Literal["before", "after"] = "before"
    search: SearchSpec = SearchSpec()
    aggregator: Literal["fedbpt", "fedavg"] = "fedbpt"
    sigma_rule: Literal["code", "paper"] = "code"
    sigma0: float = Field(1.0, gt=0, le=1000)
    sigma_floor: float = Field(0.5, ge=0, le=1000)
    rounds: int = Field(ge=1, le=100_000)
    parties_per_round: int = Field(ge=1, le=100_000, description="a round closes as soon as this many updates arrive")
    quorum: int = Field(ge=1, le=100_000, description="after the deadline, a round closes once this many arrived")
    round_deadline_s: float = Field(600.0, gt=0, le=7 * 24 * 3600)
    seed: int = 42

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        if self.quorum > self.parties_per_round:
            raise ValueError(f"quorum ({self.quorum}) cannot exceed parties_per_round ({self.parties_per_round})")
        if isinstance(self.task, str) and self.task not in BUILTIN_TASKS:
            raise ValueError(f"unknown task {self.task!r}: use one of {list(BUILTIN_TASKS)} or a task file's content")
        if isinstance(self.task, dict):
            task_from_dict(self.task, Path("."), "the job's task file")  # checks the keys; data stays with parties
        return self


class Job(BaseModel):
    id: str
    status: Literal["running", "finished", "cancelled"]
    round: int = Field(description="the open round (0-based); equals spec.rounds once finished")
    sigma: float
    spec: JobSpec
    parties: list[str]
    updates_this_round: int


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
    job: str
    status: Literal["running", "finished", "cancelled"]
    round: int
    mean: str = Field(description="the global mean z, base64 little-endian float32")
    sigma: float
    deadline: float | None = Field(description="unix time after which the round closes at quorum")
    submitted: bool = Field(description="whether this party's update for the round is in")


class UpdateIn(Strict):
    round: int = Field(ge=0)
    mean: str | list[float] = Field(description="base64 little-endian float32, or a list of numbers")
    sigmas: list[float] = Field(min_length=1, max_length=10_000)
    sigma: float
    fitness: float
    n_examples: int = Field(ge=1, le=100_000_000)
    evaluations: int = Field(0, ge=0)
    seconds: float = Field(0.0, ge=0)


class Accepted(BaseModel):
    job: str
    party: str
    round: int
    duplicate: bool = Field(description="true when this exact update had already been accepted")
    round_closed: bool


class EvaluationIn(Strict):
    accuracy: float = Field(ge=0, le=1)
    n_examples: int = Field(ge=1, le=100_000_000)
    loss: float | None = None


class Prompt(BaseModel):
    """Everything needed to rebuild the soft prompt: z plus the job's spec (model, projection, task)."""

    job: str
    which: Literal["final", "best"]
    round: int
    accuracy: float | None
    z: str
    spec: JobSpec

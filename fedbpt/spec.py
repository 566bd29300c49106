"""The job spec: every setting of a federation, defined once and shared by every entry point.

``fedbpt simulate``, ``fedbpt compare``, ``fedbpt job create``, the server's schemas and both clients read
the same frozen, validated dataclasses. A spec travels as JSON (the server stores and serves it) and is
written by people as TOML; both go through ``from_dict``, which refuses unknown keys and bad values with the
key's dotted name. A few fields are *pinned* when a model is loaded (``fedbpt.job.pin``): the model's
identity and the projection's scale and fingerprint. A party checks them before doing any work.

Step sizes are in units a person can reason about: ``search.step`` is the soft prompt's displacement per
coordinate, relative to the spread (standard deviation) of the model's token embeddings, that one CMA-ES
sample moves it on average. The papers' setting (BBT's alpha = 1, sigma0 = 1) is a step of 1.0.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from pydantic.dataclasses import dataclass

from fedbpt.errors import UserError
from fedbpt.objective import DEFAULT_STARTS, STARTS
from fedbpt.protocol import decode_vector
from fedbpt.tasks import BUILTIN_TASKS, TaskError, task_from_dict

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
AGGREGATORS = ("fedbpt", "fedavg")
RANKINGS = ("examples", "fitness", "all")
SEARCHES = ("cma-es", "zo-sgd")
STEP_RULES = ("code", "paper")
PARTITIONS = ("iid", "dirichlet")
ROBUST_RULES = ("none", "clip", "trimmed", "cross")
WIRES = ("float16", "float32")
MAX_ROUNDS = 100_000
MAX_PARTIES = 100_000
MAX_NORM = 1e4  # the largest prompt vector a party may send (fedbpt.aggregate refuses longer ones)
LAST_ROUND = 2 * MAX_ROUNDS + 1  # the final scoring round of the longest job: every round number is in [0, this]


class SpecError(UserError, ValueError):
    """A spec that cannot run; the message names the key and what is wrong with it."""


@dataclass(frozen=True, config=STRICT)
class ModelSpec:
    name: str = Field("smollm2-135m", min_length=1, max_length=500, description="what a party passes to --model")
    identity: str = Field("", max_length=500, description="pinned: the model's family, width and tokenizer hash")
    hidden_size: int = Field(0, ge=0, le=65536, description="pinned: the model's embedding width")


@dataclass(frozen=True, config=STRICT)
class PromptSpec:
    dim: int = Field(500, ge=1, le=100_000, description="the intrinsic dimension: length of z")
    n_tokens: int = Field(50, ge=1, le=4096, description="soft prompt tokens")
    placement: Literal["before", "after"] = Field("before", description="soft prompt before the text, or after it")
    calibrate: bool = Field(True, description="content-free calibration of the label words' probabilities")
    starts: tuple[str, ...] = Field(
        DEFAULT_STARTS, min_length=1, description=f"starting prompts the parties choose among, of {', '.join(STARTS)}"
    )
    initial: str = Field(
        "", max_length=1_000_000, description="z to start from (base64 float32, a learned prompt's); '' = zeros"
    )
    scale: float = Field(0.0, ge=0, description="pinned: std(token embeddings) / sqrt(dim)")
    fingerprint: str = Field("", max_length=64, description="pinned: hash of the projection's bytes")

    def __post_init__(self) -> None:
        unknown = [start for start in self.starts if start not in STARTS]
        if unknown or len(set(self.starts)) != len(self.starts):
            raise ValueError(f"starts must be distinct names from {list(STARTS)}, got {list(self.starts)}")
        if self.initial:
            if len(self.starts) != 1:
                raise ValueError("an initial z belongs to one start: give exactly one in starts")
            try:
                length = len(decode_vector(self.initial))
            except ValueError as error:
                raise ValueError(f"initial: {error}") from None
            if length != self.dim:
                raise ValueError(f"initial has {length} values, dim is {self.dim}")


@dataclass(frozen=True, config=STRICT)
class SearchSpec:
    method: Literal[SEARCHES] = Field("cma-es", description="cma-es, or zo-sgd (the forward-gradient baseline)")
    population: int = Field(5, ge=2, le=10_000, description="prompts scored per local iteration")
    iterations: int = Field(4, ge=1, le=10_000, description="local iterations per party per round")
    loss: Literal["ce", "hinge"] = "ce"
    perturb_rate: float = Field(0.5, ge=0, lt=1, description="FedBPT's token perturbation for the loss ratio; 0 = off")
    step: float = Field(0.15, gt=0, le=100, description="initial step: prompt displacement / embeddings' std")
    step_floor: float = Field(0.05, ge=0, le=100, description="the broadcast step never falls below this")
    step_rule: Literal[STEP_RULES] = Field("code", description="FedBPT's server step rule: released code or paper")
    backtrack: float = Field(
        0.5, gt=0, le=1, description="when the pooled loss rose, restart from the best with the step times this"
    )
    learning_rate: float = Field(1.0, gt=0, le=1e6, description="zo-sgd only: step along the gradient estimate")

    def __post_init__(self) -> None:
        if self.step_floor > self.step:
            raise ValueError(f"step_floor ({self.step_floor}) cannot exceed step ({self.step})")


@dataclass(frozen=True, config=STRICT)
class FederationSpec:
    parties: int = Field(10, ge=1, le=MAX_PARTIES, description="parties (and data shards) in the job")
    rounds: int = Field(8, ge=1, le=MAX_ROUNDS, description="search rounds")
    parties_per_round: int = Field(0, ge=0, le=MAX_PARTIES, description="a round closes at this many reports; 0 = all")
    quorum: int = Field(0, ge=0, le=MAX_PARTIES, description="after the deadline, close at this many; 0 = per round")
    deadline_s: float = Field(600.0, gt=0, le=7 * 24 * 3600, description="round deadline in seconds")
    aggregator: Literal[AGGREGATORS] = Field("fedbpt", description="fedbpt, or fedavg (FedAvg-BBT)")
    ranking: Literal[RANKINGS] = Field("examples", description="how fedbpt ranks and weights the parties' means")
    robust: Literal[ROBUST_RULES] = Field(
        "none",
        description="none; clip: each mean's move clipped to the median move, the pooled loss trimmed; "
        "trimmed: a coordinate-wise trimmed mean of the means, the pooled loss trimmed; "
        "cross: after each search round a rank round, where every party scores the round's means on its "
        "held-back share; the trim share of means with the worst trimmed pooled loss is dropped before aggregating",
    )
    trim: float = Field(0.2, ge=0, lt=0.5, description="robust rules: share of reports trimmed at each end")

    def __post_init__(self) -> None:
        if self.per_round > self.parties:
            raise ValueError(f"parties_per_round ({self.parties_per_round}) cannot exceed parties ({self.parties})")
        if self.needed > self.per_round:
            raise ValueError(f"federation.quorum ({self.quorum}) cannot exceed parties_per_round ({self.per_round})")

    @property
    def per_round(self) -> int:
        return self.parties_per_round or self.parties

    @property
    def needed(self) -> int:
        """Reports that close a round once its deadline has passed."""
        return self.quorum or self.per_round


@dataclass(frozen=True, config=STRICT)
class DataSpec:
    """How a benchmark task's data is dealt to the parties (a task file's parties use their own files)."""

    examples_per_party: int = Field(16, ge=1, le=10_000_000, description="training examples per party on average")
    partition: Literal[PARTITIONS] = Field("dirichlet", description="iid, or dirichlet over the labels")
    alpha: float = Field(1.0, gt=0, le=1e6, description="Dirichlet concentration (smaller = more skewed)")
    eval_examples: int = Field(0, ge=0, le=100_000_000, description="held-out rows scored; 0 = all")
    validation: float = Field(
        0.25, ge=0, lt=1, description="share of a party's examples kept from its search to score prompts; 0 = none"
    )


@dataclass(frozen=True, config=STRICT)
class PrivacySpec:
    """Differential privacy on uploads: each party clips what it sends and adds Gaussian noise before sending."""

    clip: float = Field(
        0.0, ge=0, le=MAX_NORM, description="a party's move from the global mean is clipped to this norm; 0 = off"
    )
    loss_clip: float = Field(2.0, gt=0, le=1e3, description="each loss (and fitness) reported is clipped to [0, this]")
    noise: float = Field(1.0, gt=0, le=1e3, description="Gaussian noise std per release, in units of its clip")
    delta: float = Field(1e-5, gt=0, lt=1, description="the delta epsilon is reported at")
    epsilon: float = Field(0.0, ge=0, le=1e6, description="the job's privacy budget at delta; 0 = no budget")


@dataclass(frozen=True, config=STRICT)
class JobSpec:
    task: str | dict[str, Any] = Field("sst2", description="a built-in task, a task file's path, or its content")
    name: str = Field("", max_length=200)
    seed: int = Field(42, ge=0, le=2**32 - 1, description="seeds the projection, the data split and the search")
    model: ModelSpec = field(default_factory=ModelSpec)
    prompt: PromptSpec = field(default_factory=PromptSpec)
    search: SearchSpec = field(default_factory=SearchSpec)
    federation: FederationSpec = field(default_factory=FederationSpec)
    data: DataSpec = field(default_factory=DataSpec)
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    wire: Literal[WIRES] = Field("float16", description="precision of the vectors on the wire")

    @field_validator("task")
    @classmethod
    def _task_is_known(cls, task: str | dict) -> str | dict:
        if isinstance(task, dict):
            try:
                task_from_dict(task, Path("."), "the job's task")  # checks the keys; the data stays with parties
            except TaskError as error:
                raise ValueError(str(error)) from None
        elif Path(task).suffix and not task.endswith((".toml", ".json")):
            raise ValueError(f"task file {task} is neither TOML nor JSON: write it as a .toml or .json file")
        elif task not in BUILTIN_TASKS and not task.endswith((".toml", ".json")):
            raise ValueError(f"unknown task {task!r}: use one of {list(BUILTIN_TASKS)} or a task file")
        return task

    @property
    def task_name(self) -> str:
        return self.task["name"] if isinstance(self.task, dict) else Path(self.task).stem

    @property
    def pinned(self) -> bool:
        return bool(self.model.identity and self.prompt.fingerprint)


ADAPTER = TypeAdapter(JobSpec)


def _message(error: ValidationError) -> str:
    """One line naming each bad key: 'search.population: Input should be greater than or equal to 2'."""
    problems = []
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "spec"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "unexpected_keyword_argument":
            message = "unknown key (see 'fedbpt config show' for the known ones)"
        problems.append(f"{key}: {message}")
    return "; ".join(problems)


def from_dict(data: object) -> JobSpec:
    """A spec from parsed JSON or TOML; a SpecError names every bad key."""
    try:
        return ADAPTER.validate_json(json.dumps(data))
    except ValidationError as error:
        raise SpecError(_message(error)) from None
    except (TypeError, ValueError) as error:  # not JSON-serializable (NaN is refused by the schema)
        raise SpecError(f"spec is not plain data: {error}") from None


def to_dict(spec: JobSpec) -> dict:
    return ADAPTER.dump_python(spec, mode="json")


SECTIONS = ("model", "prompt", "search", "federation", "data", "privacy")


def replace(spec: JobSpec, **changes: dict | Any) -> JobSpec:
    """A copy with some settings changed, validated: ``replace(spec, search={"step": 0.1}, seed=43)``.

    A section's dict is merged into the section; any other value (a task file's content too) replaces the old one.
    """
    data = to_dict(spec)
    for key, value in changes.items():
        data[key] = {**data[key], **value} if key in SECTIONS else value
    return from_dict(data)


def load(path: Path) -> JobSpec:
    """A spec from a TOML or JSON file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecError(f"cannot read {path}: {error.strerror}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise SpecError(f"{path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {error}") from None
    return from_dict(data)


def final_round(spec: JobSpec) -> int:
    """The final scoring round's number: after each search round (followed, under robust 'cross', by the rank
    round that ranks its means). Round 0, the start round, comes first when the spec has several starts."""
    per_search = 2 if spec.federation.robust == "cross" else 1
    return per_search * spec.federation.rounds + 1


def round_kind(spec: JobSpec, number: int) -> str:
    """The kind of round ``number`` (1 to ``final_round``): search, rank (robust 'cross': the even ones) or final."""
    if number >= final_round(spec):
        return "final"
    return "rank" if spec.federation.robust == "cross" and number % 2 == 0 else "search"


def round_kinds(spec: JobSpec) -> list[str]:
    """The kinds of a job's rounds 1, 2, ... in order."""
    return [round_kind(spec, number) for number in range(1, final_round(spec) + 1)]


def to_toml(spec: JobSpec) -> str:
    return tomli_w.dumps(to_dict(spec))

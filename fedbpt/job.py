"""A job's spec meets a loaded model: pinning the spec to it, and a party's model rebuilt (and checked) from it.

The administrator's side pins the spec once (``pin``: the model's identity, the projection's scale and
fingerprint); every party checks its own model and projection against the pins before doing any work. A
downloaded prompt carries the same spec, so ``fedbpt predict`` can rebuild the soft prompt anywhere.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedbpt.backends import Backend
from fedbpt.errors import UserError
from fedbpt.models import locate
from fedbpt.objective import PromptedModel
from fedbpt.projection import CACHE_LIMIT_BYTES, Projection, projection_scale
from fedbpt.protocol import decode_vector, encode_vector
from fedbpt.spec import JobSpec, ModelSpec, SpecError, from_dict, to_dict
from fedbpt.tasks import Task, resolve_task, task_from_dict


class JobMismatch(UserError, ValueError):
    """This party's model or projection differs from the job's; the message says how."""


def pin(spec: JobSpec, backend: Backend) -> JobSpec:
    """The spec with the loaded model's identity and the projection's scale and fingerprint filled in."""
    scale = projection_scale(backend.embedding_std(), spec.prompt.dim)
    projection = Projection(spec.seed, spec.prompt.dim, spec.prompt.n_tokens, backend.hidden_size, scale)
    model = ModelSpec(spec.model.name, backend.identity, backend.hidden_size)
    prompt = dataclasses.replace(spec.prompt, scale=scale, fingerprint=projection.fingerprint())
    return dataclasses.replace(spec, model=model, prompt=prompt)


def spec_task(spec: JobSpec, data_dir: Path | None = None) -> Task:
    """The job's task: a built-in name, a task file's path, or a task file's content whose data paths are under
    ``data_dir`` (by default the current folder)."""
    if isinstance(spec.task, dict):
        folder = Path(data_dir or ".")
        return task_from_dict(spec.task, folder, f"the job's task file (data under {folder})")
    return resolve_task(spec.task)


def preflight(spec: JobSpec, model: str | None = None, data_dir: Path | None = None, read_data: bool = True) -> Task:
    """Check in a second what would otherwise fail after the model's ten-second load: the model is where its
    name says, the task resolves and (with ``read_data``) its data files read. Returns the task."""
    locate(model or spec.model.name)
    task = spec_task(spec, data_dir)
    if read_data:
        task.load_train()
        task.load_eval()
    return task


def prompted_model(
    spec: JobSpec,
    backend: Backend,
    data_dir: Path | None = None,
    projection_cache_bytes: int = CACHE_LIMIT_BYTES,
    task: Task | None = None,
) -> PromptedModel:
    """This party's PromptedModel for the job (pinning an unpinned spec first), after checking that its model
    and projection match the pins. ``projection_cache_bytes`` bounds the projection blocks kept in memory (0:
    regenerate them on each call)."""
    expected = spec.model
    if spec.pinned and (backend.identity != expected.identity or backend.hidden_size != expected.hidden_size):
        raise JobMismatch(
            f"the job uses model {expected.name!r} (identity {expected.identity}: family, hidden size and "
            f"tokenizer), this party loaded {backend.identity}, a different base model. Any precision of the "
            f"job's model works (transformers, or a GGUF file such as {expected.name}:q4_0 on an edge "
            f"client); start it with --model {expected.name}"
        )
    scale = spec.prompt.scale if spec.pinned else projection_scale(backend.embedding_std(), spec.prompt.dim)
    projection = Projection(
        spec.seed, spec.prompt.dim, spec.prompt.n_tokens, backend.hidden_size, scale, projection_cache_bytes
    )
    if spec.pinned and projection.fingerprint() != spec.prompt.fingerprint:
        raise JobMismatch(
            f"projection fingerprint {projection.fingerprint()} differs from the job's {spec.prompt.fingerprint}: "
            "this installation generates different random projections; upgrade fedbpt to the server's version"
        )
    return PromptedModel.build(
        backend,
        task or spec_task(spec, data_dir),
        projection,
        spec.prompt.placement,
        spec.prompt.calibrate,
        spec.prompt.starts[0],
        spec.seed,
    )


class PromptFileError(UserError, ValueError):
    """A file that is not a prompt file; the message says which and why."""


@dataclass(frozen=True)
class LearnedPrompt:
    """A learned prompt and what rebuilds it anywhere: the job's spec, its chosen start and z."""

    spec: JobSpec
    start: str
    z: np.ndarray
    round: int  # the prompt after this round
    loss: float | None  # its pooled training loss
    job: str = ""

    def to_dict(self) -> dict:
        return {
            "job": self.job,
            "round": self.round,
            "loss": self.loss,
            "start": self.start,
            "z": encode_vector(self.z),
            "spec": to_dict(self.spec),
        }

    @classmethod
    def from_dict(cls, data: object, origin: str = "prompt") -> LearnedPrompt:
        keys = {"job", "round", "loss", "start", "z", "spec"}
        if isinstance(data, dict) and "rounds" in data and "spec" in data:  # the results file of 'fedbpt simulate'
            if "prompt" not in data:
                raise PromptFileError(f"{origin} is the results of a run that ended before it returned a prompt")
            data = {**data["prompt"], "spec": data["spec"]}
        if not isinstance(data, dict) or not {"start", "z", "spec"} <= set(data) <= keys:
            raise PromptFileError(
                f"{origin} is not a prompt file: it needs the keys {sorted(keys)} (write one with 'fedbpt job "
                "prompt', 'fedbpt simulate' or 'fedbpt compare')"
            )
        try:
            spec = from_dict(data["spec"])
            z = decode_vector(data["z"])
        except (SpecError, ValueError) as error:
            raise PromptFileError(f"{origin}: {error}") from None
        if z.shape != (spec.prompt.dim,) or data["start"] not in spec.prompt.starts:
            raise PromptFileError(f"{origin}: z or start does not fit the prompt's spec")
        return cls(spec, data["start"], z, int(data.get("round", 0)), data.get("loss"), data.get("job", ""))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path) -> LearnedPrompt:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as error:
            raise PromptFileError(f"cannot read {path}: {error.strerror}") from None
        except json.JSONDecodeError as error:
            raise PromptFileError(f"{path} is not JSON: {error}") from None
        return cls.from_dict(data, str(path))

"""What an administrator does to start a job: send the spec (with a task file's content) pinned to the loaded
model, and issue a token per party. ``fedbpt job create`` and ``fedbpt local`` share it."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from clients.api import Api
from fedbpt.backends import Backend
from fedbpt.federation import party_names
from fedbpt.job import pin
from fedbpt.spec import JobSpec, replace, to_dict
from fedbpt.tasks import BUILTIN_TASKS, load_task_file


def with_task_content(spec: JobSpec) -> JobSpec:
    """The spec with a task file's path replaced by the file's content, which the server stores and serves to
    the parties (each keeps the data files the task names, under its --data-dir)."""
    if not isinstance(spec.task, str) or spec.task in BUILTIN_TASKS:
        return spec
    path = Path(spec.task)
    load_task_file(path)  # a missing or malformed file fails here, with its own message
    text = path.read_text()
    return replace(spec, task=tomllib.loads(text) if path.suffix == ".toml" else json.loads(text))


def create_job(api: Api, spec: JobSpec, backend: Backend) -> tuple[dict, dict[str, str]]:
    """Create the job, pinned to ``backend``'s model and projection; return it and a token per party."""
    job = api.create_job(to_dict(pin(with_task_content(spec), backend)))
    return job, {name: api.add_party(job["id"], name)["token"] for name in party_names(spec)}

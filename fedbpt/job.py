"""A federated job's spec: what every party must agree on, and how a party rebuilds its model from it.

The spec is plain JSON, created once by the administrator's side (which loads the model to pin the
projection's scale and fingerprint) and served by the server to every party. A party checks its own
model and projection against it before doing any work, and a downloaded prompt carries the same
fields, so ``fedbpt predict`` can rebuild the soft prompt anywhere.
"""

from __future__ import annotations

from pathlib import Path

from fedbpt.backends import Backend
from fedbpt.objective import PromptedModel
from fedbpt.projection import CACHE_LIMIT_BYTES, Projection, projection_scale
from fedbpt.search import SearchConfig
from fedbpt.tasks import Task, resolve_task, task_from_dict


class JobMismatch(ValueError):
    """This party's model or projection differs from the job's; the message says how."""


def make_spec(
    backend: Backend,
    model_name: str,
    task: str | dict = "sst2",
    rounds: int = 10,
    parties_per_round: int = 3,
    quorum: int | None = None,
    round_deadline_s: float = 600.0,
    search: SearchConfig | None = None,
    aggregator: str = "fedbpt",
    sigma_rule: str = "code",
    sigma0: float = 1.0,
    sigma_floor: float = 0.5,
    projection_alpha: float = 0.5,
    dim: int = 500,
    n_tokens: int = 50,
    placement: str = "before",
    seed: int = 42,
    name: str = "",
) -> dict:
    """A job spec for the loaded model; the projection's scale and fingerprint are pinned here."""
    search = search or SearchConfig()
    scale = projection_scale(backend.embedding_std(), dim, sigma0, projection_alpha)
    projection = Projection(seed, dim, n_tokens, backend.hidden_size, scale)
    return {
        "name": name,
        "task": task,
        "model": {"name": model_name, "identity": backend.identity, "hidden_size": backend.hidden_size},
        "projection": {
            "seed": seed,
            "dim": dim,
            "n_tokens": n_tokens,
            "scale": scale,
            "fingerprint": projection.fingerprint(),
        },
        "placement": placement,
        "search": {
            "population": search.population,
            "iterations": search.iterations,
            "loss": search.loss,
            "perturb_rate": search.perturb_rate,
        },
        "aggregator": aggregator,
        "sigma_rule": sigma_rule,
        "sigma0": sigma0,
        "sigma_floor": sigma_floor,
        "rounds": rounds,
        "parties_per_round": parties_per_round,
        "quorum": quorum or parties_per_round,
        "round_deadline_s": round_deadline_s,
        "seed": seed,
    }


def spec_task(spec: dict, data_dir: Path = Path(".")) -> Task:
    """The job's task: a built-in name, or a task file's content whose data paths are under ``data_dir``."""
    if isinstance(spec["task"], dict):
        return task_from_dict(spec["task"], Path(data_dir), f"the job's task file (data under {data_dir})")
    return resolve_task(spec["task"])


def search_config(spec: dict) -> SearchConfig:
    return SearchConfig(**spec["search"])


def prompted_model(
    spec: dict, backend: Backend, data_dir: Path = Path("."), projection_cache_bytes: int = CACHE_LIMIT_BYTES
) -> PromptedModel:
    """This party's PromptedModel for the job, after checking that model and projection match it.

    ``projection_cache_bytes`` bounds the projection blocks kept in memory (0: regenerate them on each call).
    """
    expected = spec["model"]
    if backend.identity != expected["identity"] or backend.hidden_size != expected["hidden_size"]:
        raise JobMismatch(
            f"the job uses model {expected['name']!r} (identity {expected['identity']}: family, hidden size and "
            f"tokenizer), this party loaded {backend.identity}, a different base model. Any precision of the "
            f"job's model works (transformers, or a GGUF file such as {expected['name']}:q4_0 on an edge "
            f"client); start it with --model {expected['name']}"
        )
    recipe = spec["projection"]
    projection = Projection(
        recipe["seed"], recipe["dim"], recipe["n_tokens"], backend.hidden_size, recipe["scale"], projection_cache_bytes
    )
    if projection.fingerprint() != recipe["fingerprint"]:
        raise JobMismatch(
            f"projection fingerprint {projection.fingerprint()} differs from the job's {recipe['fingerprint']}: "
            "this installation generates different random projections; upgrade fedbpt to the server's version"
        )
    return PromptedModel.build(backend, spec_task(spec, data_dir), projection, spec["placement"])

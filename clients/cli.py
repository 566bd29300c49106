"""The whole ``fedbpt`` command line: ``fedbpt.cli``'s offline commands plus those that talk to a server.

``client`` joins a job as one party; ``job create|history|prompt|list|cancel|revoke`` administer jobs. The ``fedbpt``
console script runs this app (``python -m clients.cli`` does too).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer

from clients.options import CA_BUNDLE, DATA_DIR, ENROLL, EVAL_EXAMPLES, RETRY_FOR, SERVER, SHARD, TOKEN
from fedbpt.cli import DTYPE, THREADS, app, fail
from fedbpt.options import spec_options
from fedbpt.spec import JobSpec

ADMIN_TOKEN = typer.Option(..., envvar="FEDBPT_ADMIN_TOKEN", help="the server's administrator token")
READER_TOKEN = typer.Option(
    ..., envvar="FEDBPT_ADMIN_TOKEN", help="the administrator's token, or a party token of the job"
)
JOB = typer.Argument(..., help="job id")
WHICH = ("best", "last")
T = TypeVar("T")

job_app = typer.Typer(help="Administer jobs on a fedbpt server.", no_args_is_help=True)
app.add_typer(job_app, name="job")


def _ask(server: str, token: str, ca_bundle: str | None, retry_for: float, call: Callable[..., T]) -> T:
    """``call(api)`` on the server (a refusal or an unreachable server is a ``UserError``: one line)."""
    from clients.api import Api

    return call(Api(server, token, ca_bundle, retry_for))


@job_app.command("create")
@spec_options
def job_create(
    spec: JobSpec,
    server: str = SERVER,
    admin_token: str = ADMIN_TOKEN,
    engine: str = typer.Option("transformers", help="load the model here with transformers, or llama.cpp (no torch)"),
    tokens_out: Path = typer.Option(None, help="write the job id and party tokens here as JSON (mode 600)"),
    ca_bundle: str = CA_BUNDLE,
    retry_for: float = RETRY_FOR,
):
    """Create a job from the spec and issue a token for each of its parties (named party-0, party-1, ...).

    The model is loaded here once to pin its identity and the projection's scale and fingerprint, which every
    party checks before any work. A task file's content is sent; its data files stay with the parties."""
    import json

    from clients.admin import create_job
    from fedbpt.job import preflight
    from fedbpt.models import load_backend

    preflight(spec, read_data=False)  # the model and the task file; the data files stay with the parties
    _ask(server, admin_token, ca_bundle, retry_for, lambda api: api.jobs())  # reachable, and the token is right
    backend = load_backend(spec.model.name, engine=engine)
    job, tokens = _ask(server, admin_token, ca_bundle, retry_for, lambda api: create_job(api, spec, backend))
    federation = spec.federation
    start = f"a start round choosing among {len(spec.prompt.starts)} starts, " if len(spec.prompt.starts) > 1 else ""
    typer.echo(
        f"job {job['id']} created: {start}{federation.rounds} search rounds and a final scoring round; "
        f"{federation.parties} parties, {federation.per_round} per round"
    )
    if tokens_out:
        tokens_out.parent.mkdir(parents=True, exist_ok=True)
        tokens_out.touch(mode=0o600)
        tokens_out.write_text(json.dumps({"job": job["id"], "tokens": tokens}, indent=1))
        typer.echo(f"party tokens written to {tokens_out}")
    else:
        for name, token in tokens.items():
            typer.echo(f"{name}: {token}")


@job_app.command("history")
def job_history(
    job: str = JOB,
    server: str = SERVER,
    token: str = READER_TOKEN,
    ca_bundle: str = CA_BUNDLE,
    retry_for: float = RETRY_FOR,
):
    """Print every closed round with its kind: the start's losses and choice, each search round's pooled training
    loss (lower is better), step, backtracking and best round, and the parties' held-out accuracy of the prompt
    each round made."""
    from clients.history import history_lines

    history = _ask(server, token, ca_bundle, retry_for, lambda api: api.history(job))
    typer.echo("\n".join(history_lines(job, history)))


@job_app.command("prompt")
def job_prompt(
    job: str = JOB,
    out: Path = typer.Option(..., help="where to save the prompt file"),
    which: str = typer.Option("best", help="best (by pooled training loss: what a job returns) or last"),
    server: str = SERVER,
    token: str = READER_TOKEN,
    ca_bundle: str = CA_BUNDLE,
    retry_for: float = RETRY_FOR,
):
    """Download a prompt of the job (z, its start and the spec that rebuilds it) for ``fedbpt evaluate``/``predict``."""
    from fedbpt.job import LearnedPrompt

    if which not in WHICH:
        raise fail(f"--which must be one of {', '.join(WHICH)}, got {which!r}")
    data = _ask(server, token, ca_bundle, retry_for, lambda api: api.prompt(job, which))
    prompt = LearnedPrompt.from_dict(data, f"the server's {which} prompt of job {job}")
    prompt.save(out)
    loss = "not scored yet" if prompt.loss is None else f"pooled loss {prompt.loss:.4f}"
    typer.echo(f"{which} prompt of job {job} (after round {prompt.round}, {loss}) written to {out}")


@job_app.command("list")
def job_list(
    server: str = SERVER, admin_token: str = ADMIN_TOKEN, ca_bundle: str = CA_BUNDLE, retry_for: float = RETRY_FOR
):
    """List the server's jobs: id, task, parties, name and where each is."""
    from clients.party import ending
    from fedbpt.spec import from_dict

    for job in _ask(server, admin_token, ca_bundle, retry_for, lambda api: api.jobs()):
        spec = from_dict(job["spec"])
        where = f"{ending(job)} ({job['kind']})" if job["status"] == "running" else ending(job)
        typer.echo(f"{job['id']}  {spec.task_name:10s}  {len(job['parties']):3d} parties  {where}  {spec.name}")


@job_app.command("cancel")
def job_cancel(
    job: str = JOB,
    server: str = SERVER,
    admin_token: str = ADMIN_TOKEN,
    ca_bundle: str = CA_BUNDLE,
    retry_for: float = RETRY_FOR,
):
    """Cancel a running job: its parties stop at their next request, and its best prompt stays downloadable."""
    cancelled = _ask(server, admin_token, ca_bundle, retry_for, lambda api: api.cancel(job))
    typer.echo(f"job {job} cancelled at round {cancelled['round']} ({cancelled['kind']})")


@job_app.command("revoke")
def job_revoke(
    job: str = JOB,
    party: str = typer.Argument(..., help="the party's name"),
    server: str = SERVER,
    admin_token: str = ADMIN_TOKEN,
    ca_bundle: str = CA_BUNDLE,
    retry_for: float = RETRY_FOR,
):
    """Revoke a party's token (and any enrollment secret of it not yet redeemed): it stops working at once."""
    _ask(server, admin_token, ca_bundle, retry_for, lambda api: api.revoke(job, party))
    typer.echo(
        f"party {party} of job {job}: token revoked. To let it rejoin, issue it a new token or enrollment secret: "
        f'POST /v1/jobs/{job}/parties (or /enrollments) with {{"name": "{party}"}}'
    )


@app.command()
def client(
    server: str = SERVER,
    token: str = TOKEN,
    enroll: str = ENROLL,
    model: str = typer.Option(None, help="model to load (default: the job's model)"),
    dtype: str = DTYPE,
    engine: str = typer.Option("transformers", help="transformers, or llama.cpp (GGUF files, as the edge client)"),
    shard: int = SHARD,
    eval_examples: int = EVAL_EXAMPLES,
    data_dir: Path = DATA_DIR,
    threads: int = THREADS,
    ca_bundle: str = CA_BUNDLE,
    retry_for: float = RETRY_FOR,
):
    """Join a server job as one party and take part in every round until the job ends."""
    from clients.party import DataChoice, ending, join_and_run
    from fedbpt.models import load_backend

    try:
        job, info = join_and_run(
            server,
            token,
            enroll,
            ca_bundle,
            lambda spec: load_backend(model or spec.model.name, dtype, threads or None, engine),
            DataChoice(shard, eval_examples, data_dir),
            retry_for=retry_for,
        )
    except KeyboardInterrupt:
        raise fail("interrupted; rerun the same command to rejoin", 130) from None
    typer.echo(f"job {job} {ending(info)}")


@app.command()
@spec_options
def local(
    spec: JobSpec,
    out: Path = typer.Option(
        Path("runs/local"),
        help="folder for the server's database and log, the event log, the parties' logs and the returned prompt",
    ),
    dtype: str = DTYPE,
    threads: int = typer.Option(1, min=1, help="torch threads per party process"),
    data_dir: Path = typer.Option(None, help="folder of a task file's data files (default: the task file's)"),
    linger: float = typer.Option(0.0, min=0, help="seconds the server (and its dashboard) stays up after the job"),
):
    """Run a whole federation here: a server on 127.0.0.1, the job, and one client process per party (party i
    holds shard i), with their progress streamed and the live dashboard's address printed; then the learning
    curve and the returned prompt. Ctrl-C stops everything."""
    from clients.local import run_local

    raise typer.Exit(run_local(spec, out, dtype, threads, data_dir, linger))


@app.command()
def serve(
    prompt: Path = typer.Argument(
        ..., help="a prompt file from 'fedbpt job prompt', 'fedbpt simulate' or 'fedbpt compare'"
    ),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8100, help="port to listen on"),
    token: str = typer.Option(..., envvar="FEDBPT_PREDICT_TOKEN", help="the bearer token every request must send"),
    model: str = typer.Option(None, help="model to load (default: the prompt's model)"),
    dtype: str = DTYPE,
    threads: int = THREADS,
):
    """Serve a learned prompt over HTTP: POST /v1/predict classifies texts as 'fedbpt predict' does."""
    import uvicorn

    from fedbpt.job import LearnedPrompt
    from server.predict import PredictSettings, create_predict_app

    LearnedPrompt.load(prompt)  # a missing or malformed file is one line, before the model loads
    settings = PredictSettings(prompt, token, model, dtype, threads)
    typer.echo(f"serving {prompt} on http://{host}:{port}/v1/predict once its model has loaded")
    uvicorn.run(create_predict_app(settings), host=host, port=port)


if __name__ == "__main__":
    app()

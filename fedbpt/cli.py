"""The ``fedbpt`` command line."""

from __future__ import annotations

from pathlib import Path

import typer

from fedbpt.models import DEFAULT_MODEL, QUANTS

app = typer.Typer(help="Black-box federated prompt tuning (FedBPT).", no_args_is_help=True)


@app.callback()
def main() -> None:
    """Black-box federated prompt tuning (FedBPT)."""


@app.command()
def simulate(
    task: str = typer.Option("sst2", help="sst2, agnews, yelp2, dbpedia, or a task file (.toml/.json)"),
    model: str = typer.Option(DEFAULT_MODEL, help="packaged name, .gguf file, model folder or hub id"),
    dtype: str = typer.Option("bfloat16", help="bfloat16 (fast on CPU) or float32"),
    parties: int = typer.Option(10, help="number of parties"),
    rounds: int = typer.Option(10, help="federated rounds"),
    parties_per_round: float = typer.Option(1.0, help="fraction (<= 1) or number (> 1) of parties per round"),
    examples_per_party: int = typer.Option(16, help="training examples per party on average"),
    partition: str = typer.Option("dirichlet", help="iid or dirichlet"),
    alpha: float = typer.Option(1.0, help="Dirichlet concentration (smaller = more skewed)"),
    aggregator: str = typer.Option("fedbpt", help="fedbpt or fedavg (the FedAvg-BBT baseline)"),
    sigma_rule: str = typer.Option("code", help="server step-size rule: code or paper"),
    population: int = typer.Option(5, help="CMA-ES population per local iteration"),
    local_iterations: int = typer.Option(8, help="CMA-ES iterations per party per round"),
    perturb_rate: float = typer.Option(0.5, help="token perturbation rate for the fitness ratio (0 = off)"),
    loss: str = typer.Option("ce", help="ce or hinge"),
    n_tokens: int = typer.Option(50, help="soft prompt length"),
    projection_alpha: float = typer.Option(0.5, help="BBT's alpha: prompt step size relative to the embeddings"),
    placement: str = typer.Option("before", help="soft prompt before the text, or after it"),
    eval_every: int = typer.Option(1, help="score the global prompt every N rounds (and after the last)"),
    eval_examples: int = typer.Option(0, help="held-out examples to score (0 = all)"),
    seed: int = typer.Option(42, help="seed for data, projection and search"),
    threads: int = typer.Option(0, help="torch threads (0 = torch's default)"),
    out: Path = typer.Option(Path("runs/simulation.json"), help="results JSON, rewritten after every round"),
):
    """Run a federation of parties in one process on a real model and print the learning curve."""
    from fedbpt.models import load_backend
    from fedbpt.search import SearchConfig
    from fedbpt.simulate import SimulationConfig, summary
    from fedbpt.simulate import simulate as run

    config = SimulationConfig(
        task=task,
        model=model,
        dtype=dtype,
        parties=parties,
        rounds=rounds,
        parties_per_round=parties_per_round,
        examples_per_party=examples_per_party,
        partition=partition,
        alpha=alpha,
        aggregator=aggregator,
        sigma_rule=sigma_rule,
        n_tokens=n_tokens,
        projection_alpha=projection_alpha,
        placement=placement,
        eval_every=eval_every,
        eval_examples=eval_examples,
        seed=seed,
        search=SearchConfig(population=population, iterations=local_iterations, loss=loss, perturb_rate=perturb_rate),
    )
    backend = load_backend(model, dtype=dtype, threads=threads or None)
    results = run(config, backend, out)
    typer.echo(summary(results))
    typer.echo(f"results written to {out}")
    if results["status"] == "interrupted":
        raise typer.Exit(130)


models_app = typer.Typer(help="Packaged models and their re-quantized GGUF variants.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("prepare")
def models_prepare(
    name: str = typer.Argument(..., help="packaged model name, e.g. smollm2-135m"),
    quant: str = typer.Option(..., help=", ".join(QUANTS)),
):
    """Re-quantize a packaged model's GGUF file into the model cache (llama.cpp), for edge clients."""
    from fedbpt.models import ModelNotFound, prepare

    try:
        path = prepare(name, quant)
    except (ModelNotFound, ValueError) as error:
        raise _fail(str(error)) from None
    typer.echo(f"{name}:{quant} ready at {path} ({path.stat().st_size / 2**20:.1f} MiB)")


@models_app.command("list")
def models_list():
    """Show the models available here: packaged GGUF files, prepared variants and transformers copies."""
    from fedbpt.models import available_models

    for entry in available_models():
        size = f"{entry.size / 2**20:8.1f} MiB" if entry.size else " " * 12
        typer.echo(f"{entry.name:24s} {size}  {entry.origin}")


@app.command()
def compare(
    task: str = typer.Option("sst2", help="sst2, agnews, yelp2, dbpedia, or a task file (.toml/.json)"),
    partition: str = typer.Option("iid,dirichlet", help="comma-separated: iid, dirichlet"),
    alpha: float = typer.Option(1.0, help="Dirichlet concentration"),
    clients: int = typer.Option(10, help="number of parties"),
    seeds: int = typer.Option(3, help="seeds per method and partition (42, 43, ...)"),
    methods: str = typer.Option(
        "all", help="all, or some of zero-shot,in-context,fedprompt,fedptuning,fedavg-bbt,fedbpt"
    ),
    rounds: int = typer.Option(10, help="federated rounds"),
    examples_per_party: int = typer.Option(16, help="training examples per party on average"),
    eval_examples: int = typer.Option(200, help="held-out examples scored (0 = all)"),
    model: str = typer.Option(DEFAULT_MODEL, help="packaged name, .gguf file, model folder or hub id"),
    dtype: str = typer.Option("bfloat16", help="bfloat16 (fast on CPU) or float32"),
    local_iterations: int = typer.Option(8, help="FedBPT / FedAvg-BBT: CMA-ES iterations per party per round"),
    epochs: int = typer.Option(1, help="FedPrompt / FedP-tuning: local epochs per round"),
    learning_rate: float = typer.Option(3e-3, help="FedPrompt / FedP-tuning: Adam learning rate"),
    demonstrations: int = typer.Option(4, help="in-context learning: demonstrations from the party's own data"),
    threads: int = typer.Option(0, help="torch threads (0 = torch's default)"),
    out: Path = typer.Option(Path("runs/compare"), help="results folder (an existing one is resumed)"),
):
    """Compare FedBPT with FedAvg-BBT, FedPrompt, FedP-tuning, zero-shot and in-context learning."""
    from fedbpt.compare import METHODS, PARTITIONS, CompareConfig, parse_list
    from fedbpt.compare import compare as run
    from fedbpt.models import load_backend

    try:
        config = CompareConfig(
            task=task,
            model=model,
            dtype=dtype,
            methods=parse_list(methods, METHODS, "methods"),
            partitions=parse_list(partition, PARTITIONS, "partitions"),
            alpha=alpha,
            clients=clients,
            seeds=seeds,
            rounds=rounds,
            examples_per_party=examples_per_party,
            eval_examples=eval_examples,
            local_iterations=local_iterations,
            epochs=epochs,
            learning_rate=learning_rate,
            demonstrations=demonstrations,
        )
        results = run(config, load_backend(model, dtype=dtype, threads=threads or None), out)
    except ValueError as error:
        raise _fail(str(error)) from None
    typer.echo((out / "table.md").read_text())
    typer.echo(f"results, table and plots written to {out}")
    if any(run["status"] != "finished" for run in results["runs"]):
        raise typer.Exit(130)


job_app = typer.Typer(help="Administer jobs on a fedbpt server.", no_args_is_help=True)
app.add_typer(job_app, name="job")

SERVER = typer.Option(..., envvar="FEDBPT_SERVER", help="server URL, e.g. https://host:8000")
ADMIN_TOKEN = typer.Option(..., envvar="FEDBPT_ADMIN_TOKEN", help="the server's administrator token")
CA_BUNDLE = typer.Option(None, help="CA certificate bundle (PEM) to verify the server's TLS certificate")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@job_app.command("create")
def job_create(
    server: str = SERVER,
    admin_token: str = ADMIN_TOKEN,
    task: str = typer.Option("sst2", help="built-in task name or a task file (.toml/.json) whose content is sent"),
    model: str = typer.Option(DEFAULT_MODEL, help="the model every party runs (loaded here to pin the projection)"),
    engine: str = typer.Option("transformers", help="transformers, or llama.cpp to load the model here without torch"),
    rounds: int = typer.Option(10, help="federated rounds"),
    parties: int = typer.Option(3, help="party tokens to issue now (named party-0, party-1, ...)"),
    parties_per_round: int = typer.Option(0, help="a round closes once this many updates are in (0 = all parties)"),
    quorum: int = typer.Option(0, help="after the deadline, close once this many are in (0 = parties_per_round)"),
    deadline: float = typer.Option(600.0, help="round deadline in seconds"),
    aggregator: str = typer.Option("fedbpt", help="fedbpt or fedavg"),
    population: int = typer.Option(5, help="CMA-ES population per local iteration"),
    local_iterations: int = typer.Option(8, help="CMA-ES iterations per party per round"),
    perturb_rate: float = typer.Option(0.5, help="token perturbation rate for the fitness ratio (0 = off)"),
    n_tokens: int = typer.Option(50, help="soft prompt length"),
    seed: int = typer.Option(42, help="seed for the projection, the data split and the search"),
    tokens_out: Path = typer.Option(None, help="write the job id and party tokens here as JSON (mode 600)"),
    ca_bundle: str = CA_BUNDLE,
):
    """Create a job for N parties and print its id and the party tokens."""
    import json
    import tomllib

    from clients.api import Api, ApiError
    from fedbpt.job import make_spec
    from fedbpt.models import load_backend
    from fedbpt.search import SearchConfig
    from fedbpt.tasks import load_task_file

    task_spec: str | dict = task
    if task.endswith((".toml", ".json")):
        load_task_file(Path(task))  # fails early with a clear message
        text = Path(task).read_text()
        task_spec = json.loads(text) if task.endswith(".json") else tomllib.loads(text)
    backend = load_backend(model, engine=engine)
    per_round = parties_per_round or parties
    spec = make_spec(
        backend,
        model,
        task_spec,
        rounds=rounds,
        parties_per_round=per_round,
        quorum=quorum or per_round,
        round_deadline_s=deadline,
        search=SearchConfig(population=population, iterations=local_iterations, perturb_rate=perturb_rate),
        aggregator=aggregator,
        n_tokens=n_tokens,
        seed=seed,
    )
    api = Api(server, admin_token, ca_bundle)
    try:
        job = api.create_job(spec)
        tokens = {f"party-{i}": api.add_party(job["id"], f"party-{i}")["token"] for i in range(parties)}
    except ApiError as error:
        raise _fail(str(error)) from None
    typer.echo(f"job {job['id']} created: {rounds} rounds, {per_round} parties per round")
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
    job: str = typer.Argument(..., help="job id"),
    server: str = SERVER,
    token: str = ADMIN_TOKEN,
    ca_bundle: str = CA_BUNDLE,
):
    """Print the job's learning curve (accuracy reported by the parties, training fitness, sigma)."""
    from clients.api import Api

    history = Api(server, token, ca_bundle).history(job)
    typer.echo(f"job {job}: {history['status']}")
    if history["initial_accuracy"] is not None:
        typer.echo(f"  initial prompt  accuracy {history['initial_accuracy']:.4f}")
    for record in history["rounds"]:
        accuracy = "-" if record["accuracy"] is None else f"{record['accuracy']:.4f}"
        typer.echo(
            f"  round {record['round']:3d}  accuracy {accuracy}  fitness {record['train_fitness']:.4f}  "
            f"sigma {record['sigma']:.3f}  {len(record['parties'])} parties ({record['reason']}, "
            f"{record['seconds']:.0f} s)"
        )


@job_app.command("prompt")
def job_prompt(
    job: str = typer.Argument(..., help="job id"),
    out: Path = typer.Option(..., help="where to save the prompt JSON"),
    which: str = typer.Option("final", help="final, or best (the best accuracy the parties reported)"),
    server: str = SERVER,
    token: str = ADMIN_TOKEN,
    ca_bundle: str = CA_BUNDLE,
):
    """Download the job's prompt (z plus everything needed to rebuild it) for ``fedbpt predict``."""
    import json

    from clients.api import Api

    prompt = Api(server, token, ca_bundle).prompt(job, which)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(prompt, indent=1))
    typer.echo(f"{which} prompt of job {job} (after round {prompt['round']}) written to {out}")


@app.command()
def client(
    server: str = SERVER,
    token: str = typer.Option(None, envvar="FEDBPT_TOKEN", help="this party's token"),
    enroll: str = typer.Option(None, help="a one-time enrollment secret to redeem instead of a token"),
    model: str = typer.Option(None, help="model to load (default: the job's model name)"),
    dtype: str = typer.Option("bfloat16", help="bfloat16 or float32"),
    engine: str = typer.Option("transformers", help="transformers, or llama.cpp (GGUF files, as the edge client)"),
    shard: int = typer.Option(0, help="this party's shard of a benchmark task's seeded split"),
    shards: int = typer.Option(0, help="number of shards (0 = use the task's whole training file)"),
    examples_per_party: int = typer.Option(16, help="training examples per shard on average"),
    partition: str = typer.Option("dirichlet", help="iid or dirichlet (for shards)"),
    alpha: float = typer.Option(1.0, help="Dirichlet concentration (for shards)"),
    eval_examples: int = typer.Option(200, help="held-out rows scored each round (this party takes its shard)"),
    data_dir: Path = typer.Option(Path("."), help="folder holding the data files a task file names"),
    threads: int = typer.Option(0, help="torch threads (0 = torch's default)"),
    ca_bundle: str = CA_BUNDLE,
):
    """Join a server job as one party and train until the job ends."""
    from clients.party import PARTY_ERRORS, DataChoice, join_and_run
    from fedbpt.models import load_backend

    choice = DataChoice(shard, shards, examples_per_party, partition, alpha, eval_examples, data_dir)
    try:
        job, info = join_and_run(
            server,
            token,
            enroll,
            ca_bundle,
            lambda spec: load_backend(model or spec["model"]["name"], dtype, threads or None, engine),
            choice,
        )
    except PARTY_ERRORS as error:
        raise _fail(str(error)) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; rerun the same command to rejoin", 130) from None
    typer.echo(f"job {job} {info['status']} after round {info['round']}")


def _prompt_model(prompt_file: Path, model: str | None, dtype: str):
    import json

    from fedbpt.job import prompted_model
    from fedbpt.models import load_backend
    from fedbpt.protocol import decode_vector

    try:
        prompt = json.loads(prompt_file.read_text())
        spec, z = prompt["spec"], decode_vector(prompt["z"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _fail(f"{prompt_file} is not a prompt file from 'fedbpt job prompt': {error}") from None
    backend = load_backend(model or spec["model"]["name"], dtype=dtype)
    return prompted_model(spec, backend), z


@app.command()
def predict(
    texts: list[str] = typer.Argument(..., help="texts to classify"),
    prompt: Path = typer.Option(..., help="a prompt file saved by 'fedbpt job prompt'"),
    model: str = typer.Option(None, help="model to load (default: the job's model name)"),
    dtype: str = typer.Option("bfloat16", help="bfloat16 or float32"),
):
    """Classify texts with a learned prompt."""
    from fedbpt.data import Example

    prompted, z = _prompt_model(prompt, model, dtype)
    logits = prompted.logits(z, prompted.encode([Example(text, 0) for text in texts]))[0]
    for text, row in zip(texts, logits, strict=True):
        typer.echo(f"{prompted.task.label_names[int(row.argmax())]}\t{text}")


@app.command()
def evaluate(
    prompt: Path = typer.Option(..., help="a prompt file saved by 'fedbpt job prompt'"),
    eval_examples: int = typer.Option(0, help="held-out rows to score (0 = all)"),
    model: str = typer.Option(None, help="model to load (default: the job's model name)"),
    dtype: str = typer.Option("bfloat16", help="bfloat16 or float32"),
):
    """Score a learned prompt against zero-shot and the initial prompt on the task's held-out set."""
    import numpy as np

    prompted, z = _prompt_model(prompt, model, dtype)
    rows = prompted.task.load_eval()
    rows = rows[:eval_examples] if eval_examples else rows
    encoded, labels = prompted.encode(rows), np.array([row.label for row in rows])
    zero_shot = prompted.accuracy(None, encoded, labels)
    initial = prompted.accuracy(np.zeros_like(z), encoded, labels)
    learned = prompted.accuracy(z, encoded, labels)
    typer.echo(f"on {len(rows)} held-out examples of {prompted.task.name}:")
    typer.echo(f"  zero-shot        {zero_shot:.4f}")
    typer.echo(f"  initial prompt   {initial:.4f}")
    typer.echo(f"  learned prompt   {learned:.4f}  ({learned - zero_shot:+.4f} vs zero-shot)")


if __name__ == "__main__":
    app()

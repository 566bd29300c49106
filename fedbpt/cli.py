"""The ``fedbpt`` command line: the commands that need no server (``clients.cli`` adds the HTTP ones)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
import typer
from typer.core import TyperCommand, TyperGroup

from fedbpt.errors import UserError
from fedbpt.models import QUANTS
from fedbpt.options import spec_options
from fedbpt.spec import JobSpec


def _one_line_errors(invoke: Callable[[click.Context], object], ctx: click.Context) -> object:
    """Run a command; an ordinary mistake (a ``UserError``) anywhere below it is one line and exit code 2."""
    try:
        return invoke(ctx)
    except UserError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None


class Commands(TyperGroup):
    """A command group whose ordinary mistakes are one line (the ``fedbpt`` command)."""

    def invoke(self, ctx: click.Context):
        return _one_line_errors(super().invoke, ctx)


class Command(TyperCommand):
    """A single command whose ordinary mistakes are one line (``fedbpt-edge``)."""

    def invoke(self, ctx: click.Context):
        return _one_line_errors(super().invoke, ctx)


app = typer.Typer(cls=Commands, help="Black-box federated prompt tuning (FedBPT).", no_args_is_help=True)
DTYPE = typer.Option("bfloat16", help="bfloat16 (fast on CPU) or float32")
THREADS = typer.Option(0, help="torch threads (0 = torch's default)")


def _show_version(shown: bool) -> None:
    if shown:
        from importlib.metadata import version

        typer.echo(f"fedbpt {version('fedbpt')}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True, help="show the version"),
) -> None:
    """Black-box federated prompt tuning (FedBPT)."""


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
@spec_options
def simulate(
    spec: JobSpec,
    dtype: str = DTYPE,
    threads: int = THREADS,
    eval_every: int = typer.Option(1, min=1, help="score the global prompt on the held-out set every N rounds"),
    out: Path = typer.Option(Path("runs/simulation.json"), help="results JSON, rewritten after every round"),
    attack: str = typer.Option(
        None, help="make some parties lie, to measure robust aggregation: fake-loss, negate, quantized"
    ),
    attackers: int = typer.Option(2, min=1, help="with --attack: how many parties lie (party-0, party-1, ...)"),
):
    """Run a federation of parties in one process on a real model and print the learning curve.

    The returned prompt (the best by the parties' pooled training loss) is written beside the results as
    OUT with the suffix .prompt.json, for ``fedbpt evaluate`` and ``fedbpt predict``.
    """
    from fedbpt.attacks import Attack
    from fedbpt.errors import OptionError
    from fedbpt.job import preflight
    from fedbpt.models import load_backend
    from fedbpt.results import returned_prompt, summary, summary_line
    from fedbpt.simulate import simulate as run

    lying = None
    if attack is not None:
        if attackers >= spec.federation.parties:
            raise OptionError(f"--attackers must be fewer than the {spec.federation.parties} parties, got {attackers}")
        lying = Attack(attack, tuple(range(attackers)))
    preflight(spec)
    backend = load_backend(spec.model.name, dtype=dtype, threads=threads or None)
    results = run(spec, backend, out, eval_every, lying)
    typer.echo(summary(results))
    typer.echo(f"results written to {out} (events: {out.with_suffix('.events.jsonl')})")
    prompt = returned_prompt(results, spec)
    if prompt is not None:
        path = out.with_suffix(".prompt.json")
        prompt.save(path)
        typer.echo(f"returned prompt written to {path}")
    typer.echo(summary_line(results))
    if results["status"] == "interrupted":
        raise typer.Exit(130)


@app.command()
@spec_options
def compare(
    spec: JobSpec,
    partitions: str = typer.Option("iid,dirichlet", help="comma-separated: iid, dirichlet"),
    seeds: int = typer.Option(3, min=1, help="seeds per method and partition (the spec's seed, then +1, ...)"),
    methods: str = typer.Option("all", help="all, or a comma-separated list of the methods"),
    epochs: int = typer.Option(1, help="FedPrompt / FedP-tuning: local epochs per round"),
    adam_learning_rate: float = typer.Option(3e-3, help="FedPrompt / FedP-tuning: Adam learning rate"),
    demonstrations: int = typer.Option(4, help="in-context learning: demonstrations from the party's own data"),
    dtype: str = DTYPE,
    threads: int = THREADS,
    eval_every: int = typer.Option(1, min=1, help="score the global prompt on the held-out set every N rounds"),
    out: Path = typer.Option(Path("runs/compare"), help="results folder (an existing one is resumed)"),
):
    """Compare FedBPT with FedAvg-BBT, FedPrompt, FedP-tuning, a forward-gradient search, zero-shot (raw and
    calibrated), the chosen start and in-context learning, on the same parties, held-out set and seeds."""
    from fedbpt.compare import METHODS, PARTITIONS, CompareConfig, parse_list
    from fedbpt.compare import compare as run
    from fedbpt.job import preflight
    from fedbpt.models import load_backend

    preflight(spec)
    config = CompareConfig(
        spec=spec,
        methods=parse_list(methods, METHODS, "methods"),
        partitions=parse_list(partitions, PARTITIONS, "partitions"),
        seeds=seeds,
        epochs=epochs,
        learning_rate=adam_learning_rate,
        demonstrations=demonstrations,
        eval_every=eval_every,
    )
    results = run(config, load_backend(spec.model.name, dtype=dtype, threads=threads or None), out)
    typer.echo((out / "table.md").read_text())
    typer.echo(f"results, table, plots and prompts written to {out}")
    if any(run["status"] != "finished" for run in results["runs"]):
        raise typer.Exit(130)


config_app = typer.Typer(help="Job specs as TOML files.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
@spec_options
def config_show(spec: JobSpec):
    """Print the spec (the defaults, or a --config file with flags applied) as TOML a run can start from."""
    from fedbpt.spec import to_toml

    typer.echo(to_toml(spec), nl=False)


task_app = typer.Typer(help="Task files.", no_args_is_help=True)
app.add_typer(task_app, name="task")


@task_app.command("check")
def task_check(
    path: Path = typer.Argument(..., help="a task file (TOML or JSON)"),
    model: str = typer.Option(None, help="also check the verbalizer words with this model's tokenizer"),
):
    """Check a task file without running anything: its keys, its data files (rows per label) and, with --model,
    that each verbalizer word is one token of the model's tokenizer."""
    from collections import Counter

    from fedbpt.models import load_tokenizer, locate
    from fedbpt.tasks import load_task_file, verbalizer_token_ids

    task = load_task_file(path)
    if model:
        locate(model)
    for split, rows in (("train", task.load_train()), ("eval", task.load_eval())):
        counts = Counter(row.label for row in rows)
        per_label = ", ".join(f"{task.label_names[label]} {counts[label]}" for label in range(task.n_labels))
        typer.echo(f"{split}: {len(rows)} rows ({per_label})")
    if model:
        ids = verbalizer_token_ids(task, load_tokenizer(model))
        words = ", ".join(f"{word!r} -> {token}" for word, token in zip(task.verbalizers, ids, strict=True))
        typer.echo(f"verbalizer words are single tokens of {model}: {words}")
    typer.echo(f"task file {path} is fine: task {task.name!r}, {task.n_labels} labels")


models_app = typer.Typer(help="Packaged models and their re-quantized GGUF variants.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("prepare")
def models_prepare(
    name: str = typer.Argument(..., help="packaged model name, e.g. smollm2-135m"),
    quant: str = typer.Option(..., help=", ".join(QUANTS)),
):
    """Re-quantize a packaged model's GGUF file into the model cache (llama.cpp), for edge clients."""
    from fedbpt.models import prepare

    path = prepare(name, quant)
    typer.echo(f"{name}:{quant} ready at {path} ({path.stat().st_size / 2**20:.1f} MiB)")


@models_app.command("list")
def models_list():
    """Show the models available here: packaged GGUF files, prepared variants and transformers copies."""
    from fedbpt.models import available_models

    for entry in available_models():
        size = f"{entry.size / 2**20:8.1f} MiB" if entry.size else " " * 12
        typer.echo(f"{entry.name:24s} {size}  {entry.origin}")


PROMPT = typer.Option(..., help="a prompt file from 'fedbpt job prompt', 'fedbpt simulate' or 'fedbpt compare'")
MODEL = typer.Option(None, help="model to load (default: the prompt's model)")
DATA_DIR = typer.Option(None, help="folder holding the data files of the prompt's task file")


def _load_prompt(prompt_file: Path, model: str | None, dtype: str, data_dir: Path | None, read_data: bool):
    from fedbpt.job import LearnedPrompt, preflight, prompted_model
    from fedbpt.models import load_backend

    prompt = LearnedPrompt.load(prompt_file)
    task = preflight(prompt.spec, model, data_dir, read_data)
    backend = load_backend(model or prompt.spec.model.name, dtype=dtype)
    return prompt, prompted_model(prompt.spec, backend, task=task).with_start(prompt.start)


prompt_app = typer.Typer(help="Learned prompt files.", no_args_is_help=True)
app.add_typer(prompt_app, name="prompt")
EXPORTS = (".npy", ".safetensors")


@prompt_app.command("export")
def prompt_export(
    prompt: Path = typer.Argument(..., help="a prompt file (or simulate results file)"),
    out: Path = typer.Option(..., help=f"the array file to write: {' or '.join(EXPORTS)}"),
    model: str = MODEL,
    dtype: str = DTYPE,
):
    """Write the soft prompt as an embeddings array (n_tokens x hidden, float32) for use outside fedbpt: the
    start's token embeddings plus the projection of z. The model is loaded for the start's embeddings."""
    import json

    from fedbpt.errors import OptionError

    if out.suffix not in EXPORTS:
        raise OptionError(f"--out must end in {' or '.join(EXPORTS)}, got {out.name}")
    learned, prompted = _load_prompt(prompt, model, dtype, None, read_data=False)
    embeddings = prompted.prompts(learned.z)[0].astype("float32")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        import numpy as np

        np.save(out, embeddings)
    else:
        from safetensors.numpy import save_file

        spec = learned.spec
        about = {"model": spec.model.name, "task": spec.task_name}
        about |= {"placement": spec.prompt.placement, "start": learned.start, "round": learned.round}
        save_file({"soft_prompt": embeddings}, out, metadata={key: json.dumps(value) for key, value in about.items()})
    rows, width = embeddings.shape
    typer.echo(f"soft prompt {rows} x {width} (placed {learned.spec.prompt.placement} the text) written to {out}")


@app.command()
def predict(
    texts: list[str] = typer.Argument(..., help="texts to classify"),
    prompt: Path = PROMPT,
    model: str = MODEL,
    dtype: str = DTYPE,
    data_dir: Path = DATA_DIR,
):
    """Classify texts with a learned prompt: the label and its (calibrated) probability per text."""
    import numpy as np

    from fedbpt.data import Example

    learned, prompted = _load_prompt(prompt, model, dtype, data_dir, read_data=False)
    scores = prompted.scores(learned.z, prompted.encode([Example(text, 0) for text in texts]))[0]
    for text, row in zip(texts, scores, strict=True):
        label = int(row.argmax())
        typer.echo(f"{prompted.task.label_names[label]}\t{np.exp(row[label]):.3f}\t{text}")


@app.command()
def evaluate(
    prompt: Path = PROMPT,
    eval_examples: int = typer.Option(0, help="held-out rows to score (0 = all)"),
    model: str = MODEL,
    dtype: str = DTYPE,
    data_dir: Path = DATA_DIR,
):
    """Score a learned prompt against zero-shot (raw and calibrated) and its start on the task's held-out set."""
    import dataclasses

    import numpy as np

    learned, prompted = _load_prompt(prompt, model, dtype, data_dir, read_data=True)
    rows = prompted.task.load_eval()
    rows = rows[:eval_examples] if eval_examples else rows
    encoded, labels = prompted.encode(rows), np.array([row.label for row in rows])
    raw = dataclasses.replace(prompted, calibrate=False).accuracy(None, encoded, labels)
    calibrated = dataclasses.replace(prompted, calibrate=True).accuracy(None, encoded, labels)
    start = prompted.accuracy(np.zeros_like(learned.z), encoded, labels)
    score = prompted.accuracy(learned.z, encoded, labels)
    scoring = "calibrated" if prompted.calibrate else "raw"
    typer.echo(f"on {len(rows)} held-out examples of {prompted.task.name} ({scoring} scoring for the prompts):")
    typer.echo(f"  zero-shot              {raw:.4f}")
    typer.echo(f"  zero-shot, calibrated  {calibrated:.4f}")
    typer.echo(f"  start ({learned.start})  {start:.4f}")
    typer.echo(
        f"  learned prompt         {score:.4f}  (after round {learned.round}; {100 * (score - raw):+.2f} points)"
    )
    typer.echo(
        f"zero_shot={raw:.4f} zero_shot_calibrated={calibrated:.4f} learned={score:.4f} "
        f"gain_points={100 * (score - raw):.2f}"
    )


if __name__ == "__main__":
    app()

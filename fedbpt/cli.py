"""The ``fedbpt`` command line."""

from __future__ import annotations

from pathlib import Path

import typer

from fedbpt.models import DEFAULT_MODEL

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


if __name__ == "__main__":
    app()

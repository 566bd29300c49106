"""``fedbpt compare``: every method on the same model, data, partitions, held-out set and seeds.

Methods: zero-shot and in-context learning (``fedbpt.baselines.incontext``), FedPrompt and FedP-tuning
(``fedbpt.baselines.federated``), and FedAvg-BBT and FedBPT (``fedbpt.simulate`` with the ``fedavg``
and ``fedbpt`` aggregators). One run is a (method, partition, seed); runs happen one after another in
this process. After each run the folder gets ``results.json`` (every run's full results), ``table.md``
and the plots, so Ctrl-C keeps every finished run; rerunning the same command skips them.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fedbpt.backends import Backend
from fedbpt.search import SearchConfig
from fedbpt.simulate import SimulationConfig, write_json

METHODS = ("zero-shot", "in-context", "fedprompt", "fedptuning", "fedavg-bbt", "fedbpt")
AGGREGATOR = {"fedavg-bbt": "fedavg", "fedbpt": "fedbpt"}
PARTITIONS = ("iid", "dirichlet")
LABELS = {
    "zero-shot": "Zero-shot (manual template)",
    "in-context": "In-context learning",
    "fedprompt": "FedPrompt",
    "fedptuning": "FedP-tuning",
    "fedavg-bbt": "FedAvg-BBT",
    "fedbpt": "FedBPT",
}
# Settings that every run of one results folder must share; methods, partitions and seeds may grow.
GRID_FIELDS = ("methods", "partitions", "seeds")


def parse_list(value: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    """A comma-separated choice ("all" = every allowed value), in the allowed order, or a ValueError."""
    names = allowed if value.strip() == "all" else tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise ValueError(f"unknown {what} {unknown or value!r}: use 'all' or a comma-separated list of {allowed}")
    return tuple(name for name in allowed if name in names)


@dataclass(frozen=True)
class CompareConfig:
    task: str = "sst2"
    model: str = "smollm2-135m"
    dtype: str = "bfloat16"
    methods: tuple[str, ...] = METHODS
    partitions: tuple[str, ...] = PARTITIONS
    alpha: float = 1.0
    clients: int = 10
    seeds: int = 3
    first_seed: int = 42
    rounds: int = 10
    examples_per_party: int = 16
    eval_examples: int = 200
    population: int = 5  # FedBPT and FedAvg-BBT
    local_iterations: int = 8
    perturb_rate: float = 0.5
    epochs: int = 1  # FedPrompt and FedP-tuning
    learning_rate: float = 3e-3
    batch_size: int = 8
    demonstrations: int = 4  # in-context learning

    def __post_init__(self) -> None:
        for name, allowed in (("methods", METHODS), ("partitions", PARTITIONS)):
            values = getattr(self, name)
            if not values or set(values) - set(allowed):
                raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {values}")
        if self.seeds < 1 or self.demonstrations < 0:
            raise ValueError("seeds must be at least 1 and demonstrations at least 0")
        self.simulation("iid", self.first_seed, "fedbpt")  # checks the shared settings early
        self.training()

    def simulation(self, partition: str, seed: int, aggregator: str = "fedbpt") -> SimulationConfig:
        return SimulationConfig(
            task=self.task,
            model=self.model,
            dtype=self.dtype,
            parties=self.clients,
            rounds=self.rounds,
            examples_per_party=self.examples_per_party,
            partition=partition,
            alpha=self.alpha,
            aggregator=aggregator,
            eval_examples=self.eval_examples,
            seed=seed,
            search=SearchConfig(
                population=self.population, iterations=self.local_iterations, perturb_rate=self.perturb_rate
            ),
        )

    def training(self):
        from fedbpt.baselines.prompt_tuning import LocalTraining

        return LocalTraining(self.epochs, self.learning_rate, self.batch_size)

    def shared(self) -> dict:
        """The settings every run in one folder must agree on."""
        return {key: value for key, value in asdict(self).items() if key not in GRID_FIELDS}


@contextmanager
def peak_rss() -> Iterator[dict]:
    """The process's peak resident memory while inside (model weights included), in ``box["bytes"]``.

    On Linux the high-water mark is reset on entry (``/proc/self/clear_refs``); elsewhere it is the
    peak since the process started, which the box says.
    """
    box: dict = {}
    status = Path("/proc/self/status")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        box["since"] = "run"
    except OSError:
        box["since"] = "process start"
    yield box
    if box["since"] == "run":
        line = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
        box["bytes"] = int(line.split()[1]) * 1024
    else:
        scale = 1 if platform.system() == "Darwin" else 1024
        box["bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def run_one(config: CompareConfig, method: str, partition: str, seed: int, backend: Backend, scratch: Path) -> dict:
    """One method's full results on one partition and seed (the simulator's format for the federated ones)."""
    if method in AGGREGATOR:
        from fedbpt.simulate import simulate

        results = simulate(config.simulation(partition, seed, AGGREGATOR[method]), backend, scratch)
        results["trainable_parameters"] = results["config"]["dim"]
        return results
    if method in ("fedprompt", "fedptuning"):
        from fedbpt.baselines.federated import run_gradient

        return run_gradient(method, config.simulation(partition, seed), config.training(), backend, scratch)
    from fedbpt.baselines import incontext
    from fedbpt.simulate import prepare

    started = time.perf_counter()
    federation = prepare(config.simulation(partition, seed), backend)
    results = {"method": method, "status": "finished", "rounds": [], "trainable_parameters": 0}
    if method == "zero-shot":
        results["final_accuracy"] = incontext.zero_shot_accuracy(federation)
    else:
        accuracies = incontext.in_context_accuracies(federation, config.demonstrations, seed)
        results["party_accuracies"] = accuracies
        results["final_accuracy"] = float(np.mean(accuracies))
    results["seconds"] = time.perf_counter() - started
    return results


def summarize(method: str, partition: str, seed: int, results: dict, peak: dict) -> dict:
    """The figures the table and plots need, from one run's full results."""
    rounds = results["rounds"]
    initial = results.get("initial_prompt_accuracy")
    curve = [[0, initial, 0]] if initial is not None else []
    total_bytes = 0
    for record in rounds:
        total_bytes += len(record["parties"]) * sum(record["bytes_per_party"].values())
        if "accuracy" in record:
            curve.append([record["round"], record["accuracy"], total_bytes])
    seconds = [sum(v for k, v in record["seconds"].items() if k != "evaluate") for record in rounds]
    return {
        "method": method,
        "partition": partition,
        "seed": seed,
        "status": results["status"],
        "final_accuracy": results.get("final_accuracy"),
        "rounds": len(rounds),
        "trainable_parameters": results["trainable_parameters"],
        "bytes_up": int(np.mean([r["bytes_per_party"]["sent"] for r in rounds])) if rounds else 0,
        "bytes_down": int(np.mean([r["bytes_per_party"]["received"] for r in rounds])) if rounds else 0,
        "seconds_per_round": float(np.mean(seconds)) if seconds else None,
        "seconds": results.get("seconds"),
        "peak_rss_bytes": peak["bytes"],
        "peak_rss_since": peak["since"],
        "curve": curve,  # [round, accuracy, total bytes communicated by all parties so far]
        "results": results,
    }


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    std = f" ± {100 * np.std(values, ddof=1):.1f}" if len(values) > 1 else ""
    return f"{100 * np.mean(values):.1f}{std}"


def present(runs: list[dict]) -> tuple[list[str], list[str]]:
    """The methods and partitions that have runs (a folder can gather runs from several invocations)."""
    return (
        [method for method in METHODS if any(run["method"] == method for run in runs)],
        [partition for partition in PARTITIONS if any(run["partition"] == partition for run in runs)],
    )


def table(runs: list[dict], config: CompareConfig, model: str) -> str:
    """Markdown: accuracy mean ± std over seeds per method and partition, and the cost of each method."""
    lines = [
        f"{config.task}, {model}, {config.clients} parties, {config.rounds} rounds, "
        f"{config.examples_per_party} training examples per party, {config.eval_examples or 'all'} held-out "
        f"examples; Dirichlet alpha {config.alpha}. Accuracy in % (mean ± std over the seeds that finished).",
        "",
        "| method | partition | accuracy | seeds | rounds | trainable params | up B/party/round | down B/party/round"
        " | peak RSS MB | s/round |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    methods, partitions = present(runs)
    for method in methods:
        for partition in partitions:
            done = [r for r in runs if r["method"] == method and r["partition"] == partition]
            if not done:
                continue
            finished = [r for r in done if r["status"] == "finished"]
            shown = finished or done
            per_round = [r["seconds_per_round"] for r in shown if r["seconds_per_round"] is not None]
            cells = [
                LABELS[method],
                partition,
                _cell([r["final_accuracy"] for r in finished]),
                f"{len(finished)}"
                + (f" (+{len(done) - len(finished)} interrupted)" if len(done) > len(finished) else ""),
                str(max(r["rounds"] for r in shown)) if shown[0]["curve"] else "-",
                f"{shown[0]['trainable_parameters']:,}",
                f"{shown[0]['bytes_up']:,}",
                f"{shown[0]['bytes_down']:,}",
                f"{max(r['peak_rss_bytes'] for r in shown) / 2**20:,.0f}",
                f"{np.mean(per_round):.1f}" if per_round else "-",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Bytes: the JSON a party sends and receives per round (vectors as base64 float32). Peak RSS: the "
        "process's peak resident memory during the run (model weights included). s/round: training plus "
        "aggregation time of one round, all parties one after another in one process, evaluation excluded.",
    ]
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], config: CompareConfig, out_dir: Path) -> list[Path]:
    """accuracy_vs_round.png and accuracy_vs_bytes.png, one panel per partition, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    methods, partitions = present(runs)
    paths = []
    for name, x_index, x_label, log in (
        ("accuracy_vs_round", 0, "round (0 = starting prompt)", False),
        ("accuracy_vs_bytes", 2, "total bytes communicated, all parties (log)", True),
    ):
        figure, axes = plt.subplots(1, len(partitions), figsize=(6 * len(partitions), 4.2), squeeze=False)
        for axis, partition in zip(axes[0], partitions, strict=True):
            for method in methods:
                done = [r for r in runs if r["method"] == method and r["partition"] == partition]
                if not done:
                    continue
                if not done[0]["curve"]:  # zero-shot and in-context: a level, no rounds
                    level = 100 * np.mean([r["final_accuracy"] for r in done])
                    axis.axhline(level, linestyle="--", linewidth=1, label=LABELS[method], color=_color(method))
                    continue
                length = min(len(r["curve"]) for r in done)
                points = np.array([r["curve"][:length] for r in done], dtype=float)
                xs, ys = points[0, :, x_index], 100 * points[:, :, 1].mean(axis=0)
                if log:
                    xs, ys = xs[1:], ys[1:]
                axis.plot(xs, ys, marker="o", label=LABELS[method], color=_color(method))
            if log:
                axis.set_xscale("log")
            else:
                axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.set_title(f"{config.task}, {partition}" + (f" (alpha {config.alpha})" if partition != "iid" else ""))
            axis.set_xlabel(x_label)
            axis.set_ylabel("held-out accuracy (%)")
            axis.grid(alpha=0.3)
            if axis.get_legend_handles_labels()[0]:
                axis.legend(fontsize=8)
        figure.tight_layout()
        path = out_dir / f"{name}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)
    return paths


def _color(method: str) -> str:
    return f"C{METHODS.index(method)}"


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def compare(config: CompareConfig, backend: Backend, out_dir: Path) -> dict:
    """Run every (seed, partition, method) not already in ``out_dir/results.json``; write results, table, plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.json"
    previous = json.loads(results_path.read_text()) if results_path.exists() else None
    runs: list[dict] = []
    if previous is not None:
        if CompareConfig(**_tuples(previous["config"])).shared() != config.shared():
            raise ValueError(
                f"{results_path} holds runs with other settings; use another --out folder or the same settings"
            )
        runs = [run for run in previous["runs"] if run["status"] == "finished"]
    results = {"config": asdict(config), "model": backend.identity, "machine": machine(), "runs": runs}
    grid = [
        (method, partition, config.first_seed + offset)
        for offset in range(config.seeds)
        for partition in config.partitions
        for method in config.methods
    ]
    done = {(run["method"], run["partition"], run["seed"]) for run in runs}
    todo = [key for key in grid if key not in done]
    tqdm.write(f"{len(todo)} of {len(grid)} runs to do; {len(runs)} finished runs kept from {results_path}")
    started = time.perf_counter()
    for number, (method, partition, seed) in enumerate(todo, start=1):
        minutes = (time.perf_counter() - started) / 60
        tqdm.write(f"[{number}/{len(todo)}] {method}, {partition}, seed {seed} (after {minutes:.0f} min)")
        scratch = out_dir / "runs" / f"{method}-{partition}-{seed}.json"
        try:
            with peak_rss() as peak:
                outcome = run_one(config, method, partition, seed, backend, scratch)
        except KeyboardInterrupt:  # between a method's own checkpoints (zero-shot, in-context, set-up)
            tqdm.write("interrupted")
            break
        run = summarize(method, partition, seed, outcome, peak)
        runs.append(run)
        results["machine"]["load_average_end"] = machine()["load_average"]
        _write(results, config, out_dir)
        tqdm.write(f"  accuracy {run['final_accuracy']}, {run['status']}")
        if run["status"] != "finished":
            break
    _write(results, config, out_dir)
    return results


def _tuples(config: dict) -> dict:
    return {key: tuple(value) if isinstance(value, list) else value for key, value in config.items()}


def _write(results: dict, config: CompareConfig, out_dir: Path) -> None:
    write_json(out_dir / "results.json", results)
    (out_dir / "table.md").write_text(table(results["runs"], config, results["model"]))
    if results["runs"]:
        plot(results["runs"], config, out_dir)

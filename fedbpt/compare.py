"""``fedbpt compare``: every method on the same model, data, partitions, held-out set and seeds.

One job spec drives every method. Training-free rows: zero-shot (the bare template) raw and calibrated, the
start the parties choose (its start round), and in-context learning (``fedbpt.baselines.incontext``).
Trained rows: FedPrompt and FedP-tuning (``fedbpt.baselines.federated``, gradients), a forward-gradient
search (zeroth-order SGD on the same z and objective, ``search.method = "zo-sgd"``, averaged like
FedAvg), FedAvg-BBT (the ``fedavg`` aggregator) and FedBPT (the spec as given), all run by the simulator's
rounds from the same chosen start. One run is a (method, partition, seed); runs happen one after another in
this process. After each run the folder gets ``results.json`` (every run's full results), ``table.md``,
the plots and each trained run's returned prompt under ``prompts/``, so Ctrl-C keeps every finished run;
rerunning the same command skips them.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fedbpt import spec as specs
from fedbpt.backends import Backend
from fedbpt.errors import OptionError
from fedbpt.results import returned_prompt, write_json
from fedbpt.rounds import initial_z
from fedbpt.spec import JobSpec
from fedbpt.tracking import provenance

METHODS = (
    "zero-shot",
    "zero-shot-calibrated",
    "start",
    "in-context",
    "fedprompt",
    "fedptuning",
    "forward-gradient",
    "fedavg-bbt",
    "fedbpt",
)
# What each simulated method changes in the spec.
SIMULATED = {
    "fedbpt": {},
    "fedavg-bbt": {"federation": {"aggregator": "fedavg"}},
    "forward-gradient": {"search": {"method": "zo-sgd"}, "federation": {"aggregator": "fedavg"}},
}
PARTITIONS = ("iid", "dirichlet")
LABELS = {
    "zero-shot": "Zero-shot (manual template)",
    "zero-shot-calibrated": "Zero-shot, calibrated",
    "start": "Chosen start (z = 0)",
    "in-context": "In-context learning",
    "fedprompt": "FedPrompt",
    "fedptuning": "FedP-tuning",
    "forward-gradient": "Forward gradient (ZO-SGD)",
    "fedavg-bbt": "FedAvg-BBT",
    "fedbpt": "FedBPT",
}


def parse_list(value: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    """A comma-separated choice ("all" = every allowed value), in the allowed order, or a ValueError."""
    names = allowed if value.strip() == "all" else tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise OptionError(f"unknown {what} {unknown or value!r}: use 'all' or a comma-separated list of {allowed}")
    return tuple(name for name in allowed if name in names)


@dataclass(frozen=True)
class CompareConfig:
    spec: JobSpec = field(default_factory=JobSpec)
    methods: tuple[str, ...] = METHODS
    partitions: tuple[str, ...] = PARTITIONS
    seeds: int = 3  # the spec's seed, then +1, ...
    epochs: int = 1  # FedPrompt and FedP-tuning
    learning_rate: float = 3e-3
    batch_size: int = 8
    demonstrations: int = 4  # in-context learning
    eval_every: int = 1

    def __post_init__(self) -> None:
        for name, allowed in (("methods", METHODS), ("partitions", PARTITIONS)):
            values = getattr(self, name)
            if not values or set(values) - set(allowed):
                raise OptionError(f"{name} must be a non-empty subset of {allowed}, got {values}")
        if self.seeds < 1 or self.demonstrations < 0 or self.eval_every < 1:
            raise OptionError("seeds and eval_every must be at least 1 and demonstrations at least 0")
        self.training()

    def run_spec(self, method: str, partition: str, seed: int) -> JobSpec:
        changes = SIMULATED.get(method, {})
        return specs.replace(self.spec, seed=seed, data={"partition": partition}, **{k: v for k, v in changes.items()})

    def training(self):
        from fedbpt.baselines.prompt_tuning import LocalTraining

        return LocalTraining(self.epochs, self.learning_rate, self.batch_size)

    def shared(self) -> dict:
        """The settings every run in one folder must agree on (methods, partitions and seeds may grow)."""
        settings = {key: value for key, value in asdict(self).items() if key not in ("methods", "partitions", "seeds")}
        settings["spec"] = {key: value for key, value in specs.to_dict(self.spec).items() if key != "seed"}
        settings["spec"]["data"].pop("partition")
        return settings

    def seed_list(self) -> list[int]:
        return [self.spec.seed + offset for offset in range(self.seeds)]


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested settings dicts, with both values."""
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} there, {b!r} here")
    return found


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
    """One method's full results on one partition and seed (the simulator's format for the trained ones)."""
    spec = config.run_spec(method, partition, seed)
    if method in SIMULATED:
        from fedbpt.simulate import simulate

        results = simulate(spec, backend, scratch, config.eval_every)
        results["trainable_parameters"] = spec.prompt.dim
        return results
    if method in ("fedprompt", "fedptuning"):
        from fedbpt.baselines.federated import run_gradient

        return run_gradient(method, spec, config.training(), backend, scratch, config.eval_every)
    from fedbpt.baselines import incontext
    from fedbpt.federation import prepare, zero_shot
    from fedbpt.simulate import start_round

    started = time.perf_counter()
    federation = prepare(spec, backend)
    results = {"method": method, "status": "finished", "rounds": [], "trainable_parameters": 0}
    if method in ("zero-shot", "zero-shot-calibrated"):
        results["final_accuracy"] = zero_shot(federation)[method.replace("-", "_")]
    elif method == "start":
        state, record = start_round(spec, federation)
        model = federation.model.with_start(state.start)
        results["start"] = state.start
        results["final_accuracy"] = model.accuracy(initial_z(spec), federation.eval_set, federation.eval_labels)
    else:
        accuracies = incontext.in_context_accuracies(federation, config.demonstrations, seed)
        results["party_accuracies"] = accuracies
        results["final_accuracy"] = float(np.mean(accuracies))
    results["seconds"] = time.perf_counter() - started
    return results


def summarize(method: str, partition: str, seed: int, results: dict, peak: dict) -> dict:
    """The figures the table and plots need, from one run's full results."""
    rounds = [record for record in results["rounds"] if record["kind"] == "search"]
    curve, total_bytes = [], 0
    for record in results["rounds"]:
        total_bytes += len(record["parties"]) * sum(record.get("bytes_per_party", {}).values())
        if "accuracy" in record:
            curve.append([record["round"], record["accuracy"], total_bytes])
    seconds = [record["seconds"] for record in rounds]
    return {
        "method": method,
        "partition": partition,
        "seed": seed,
        "status": results["status"],
        "final_accuracy": results.get("final_accuracy"),
        "start_accuracy": results.get("start_accuracy"),
        "last_accuracy": results.get("last_accuracy"),
        "best_round": results.get("best_round"),
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
    spec = config.spec
    lines = [
        f"{spec.task_name}, {spec.model.name} ({model}), {spec.federation.parties} parties "
        f"({spec.federation.per_round} per round), "
        f"{spec.federation.rounds} rounds, {spec.data.examples_per_party} training examples per party, "
        f"{spec.data.eval_examples or 'all'} held-out examples; Dirichlet alpha {spec.data.alpha}; "
        f"{'calibrated' if spec.prompt.calibrate else 'raw'} scoring. Accuracy in % (mean ± std over the seeds "
        "that finished; a trained method's accuracy is that of the prompt it returns).",
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
        f"Bytes: the JSON a party sends and receives per search round (vectors as base64 {spec.wire} for the "
        "black-box methods, float32 for the gradient ones). Peak RSS: the "
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
        figure, axes = plt.subplots(
            1, len(partitions), figsize=(6 * len(partitions), 4.2), squeeze=False, sharey=True
        )  # one y-range: panels compare at a glance
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
                axis.plot(xs, ys, **_style(method), label=LABELS[method], alpha=0.85)
            if log:
                axis.set_xscale("log")
            else:
                axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            task = config.spec.task_name
            alpha = f" (alpha {config.spec.data.alpha})" if partition != "iid" else ""
            axis.set_title(f"{task}, {partition}{alpha}")
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


MARKERS = "osD^vP*Xh<>"


def _style(method: str) -> dict:
    """A colour, marker and dash per method, so curves that overlap stay told apart."""
    index = METHODS.index(method)
    dashes = ("-", "--", "-.", ":")[index % 4]
    return {"color": _color(method), "marker": MARKERS[index % len(MARKERS)], "linestyle": dashes, "markersize": 5}


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
        changed = differences(previous["shared"], json.loads(json.dumps(config.shared())))
        if changed:
            raise OptionError(
                f"{results_path} holds runs with other settings ({'; '.join(changed)}); use another --out folder "
                "or the same settings"
            )
        runs = [run for run in previous["runs"] if run["status"] == "finished"]
    results = {
        "config": {**asdict(config), "spec": specs.to_dict(config.spec)},
        "shared": config.shared(),
        "model": backend.identity,
        "machine": machine(),
        "provenance": provenance(),
        "runs": runs,
    }
    grid = [
        (method, partition, seed)
        for seed in config.seed_list()
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
        learned = returned_prompt(outcome, config.run_spec(method, partition, seed))
        if learned is not None:
            learned.save(out_dir / "prompts" / f"{method}-{partition}-{seed}.json")
        results["machine"]["load_average_end"] = machine()["load_average"]
        _write(results, config, out_dir)
        tqdm.write(f"  accuracy {run['final_accuracy']}, {run['status']}")
        if run["status"] != "finished":
            break
    _write(results, config, out_dir)
    return results


def _write(results: dict, config: CompareConfig, out_dir: Path) -> None:
    write_json(out_dir / "results.json", results)
    (out_dir / "table.md").write_text(table(results["runs"], config, results["model"]))
    if results["runs"]:
        plot(results["runs"], config, out_dir)

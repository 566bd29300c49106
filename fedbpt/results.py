"""A run's results file: written whole after every round, marked finished or interrupted at the end, summed
up for a person and in one machine-readable line, and the prompt it returns.

``fedbpt simulate``, each run of ``fedbpt compare`` and the gradient baselines write this format.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fedbpt.job import LearnedPrompt
from fedbpt.protocol import decode_vector
from fedbpt.spec import JobSpec, from_dict


def write_json(path: Path, data: dict) -> None:
    """Replace ``path`` in one rename, so a reader (or a Ctrl-C) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1))
    partial.replace(path)


@contextmanager
def finishing(results: dict, save: Callable[[], None], bar: tqdm, started: float) -> Iterator[None]:
    """Around a federation's rounds: mark the results finished, or interrupted on Ctrl-C (which is absorbed, so
    the caller returns every finished round); then close the progress bar, add the total time and save."""
    try:
        yield
        results["status"] = "finished"
    except KeyboardInterrupt:
        results["status"] = "interrupted"
        tqdm.write("interrupted: results hold every finished round")
    finally:
        bar.close()
        results["seconds"] = time.perf_counter() - started
        save()


def returned_prompt(results: dict, spec: JobSpec) -> LearnedPrompt | None:
    """The prompt a finished run returns (the best by pooled training loss), or None before it has one."""
    if "prompt" not in results:
        return None
    prompt = results["prompt"]
    return LearnedPrompt(spec, prompt["start"], decode_vector(prompt["z"]), prompt["round"], prompt["loss"])


def summary_line(results: dict) -> str:
    """The machine-readable last line of ``fedbpt simulate``."""
    searched = [record for record in results["rounds"] if "bytes_per_party" in record and record["kind"] == "search"]
    per_round = int(np.mean([sum(r["bytes_per_party"].values()) for r in searched])) if searched else 0
    figures = {key: results.get(f"{key}_accuracy", float("nan")) for key in ("start", "last", "final")}
    return (
        f"task={from_dict(results['spec']).task_name} zero_shot={results['zero_shot']:.4f} "
        f"zero_shot_calibrated={results['zero_shot_calibrated']:.4f} "
        + " ".join(f"{key}={value:.4f}" for key, value in figures.items())
        + f" bytes_per_party_round={per_round}"
    )


def summary(results: dict) -> str:
    spec = from_dict(results["spec"])
    lines = [
        f"{spec.federation.aggregator} on {spec.task_name} with {spec.model.name}: {results['status']} after "
        f"{len(results['rounds'])} rounds in "
        f"{results.get('seconds', 0):.0f} s",
        f"  zero-shot            {results['zero_shot']:.4f} (calibrated {results['zero_shot_calibrated']:.4f})",
        "  (loss: the parties' pooled training loss of a prompt, lower is better; accuracy on the held-out rows)",
    ]
    for record in results["rounds"]:
        accuracy = f"accuracy {record['accuracy']:.4f}" if "accuracy" in record else " " * 15
        if record["kind"] == "start":
            losses = ", ".join(f"{name} {loss:.4f}" for name, loss in record["start_losses"].items())
            lines.append(f"  round {record['round']:3d}  start {record['start']!r} {accuracy}  (losses: {losses})")
        elif record["kind"] == "search":
            note = "  backtracked to the best" if record["backtracked"] else ""
            lines.append(
                f"  round {record['round']:3d}  {accuracy}  loss of round {record['scored_round']}'s prompt "
                f"{record['loss']:.4f}  step {record['sigma']:.3f}{note}"
            )
        elif record["kind"] == "rank":
            lines.append(
                f"  round {record['round']:3d}  {accuracy}  ranked {len(record['cross_losses'])} means by the parties' "
                f"losses  step {record['sigma']:.3f}"
            )
        else:
            scored = f"round {record['scored_round']}'s prompt"
            lines.append(f"  round {record['round']:3d}  final: loss of {scored} {record['loss']:.4f}")
    if "final_accuracy" in results:
        lines.append(
            f"  returned prompt: after round {results['best_round']}, accuracy {results['final_accuracy']:.4f} "
            f"({results['final_accuracy'] - results['zero_shot_calibrated']:+.4f} vs calibrated zero-shot)"
        )
    return "\n".join(lines)

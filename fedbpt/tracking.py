"""A run's trail: where it came from (versions, git commit) and one JSON line per round it played.

``simulate``, ``compare`` and the server's jobs write the same events, so one reader (``jq``, pandas, a
dashboard) follows any of them. With the optional ``tensorboard`` package installed (``pip install
'fedbpt[tracking]'``), the figures are also written as TensorBoard scalars beside the event log.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import platform
import subprocess
import time
from pathlib import Path

PACKAGES = ("fedbpt", "numpy", "cma", "torch", "transformers", "llama_cpp_python", "fastapi", "tensorboard")
# What a round event holds: the record's own keys, then the accuracy and the traffic.
ROUND_KEYS = ("round", "kind", "loss", "accuracy", "sigma", "best_round", "backtracked", "seconds", "epsilon")


def provenance() -> dict:
    """The installed versions of the packages that decide a run's numbers, and the git commit of this checkout."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {"python": platform.python_version(), "packages": versions, "git_commit": git_commit()}


def git_commit() -> str | None:
    """The commit of the checkout fedbpt runs from (with '+dirty' for uncommitted changes); None when installed."""
    source = Path(__file__).resolve().parent.parent
    if not (source / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=source, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def round_event(record: dict, accuracy: dict | None = None) -> dict:
    """The event of a closed round: its kind, pooled loss (lower is better), step, the held-out accuracy raw and
    calibrated of the prompt it made (when scored), the bytes per party and the number of parties."""
    event = {"event": "round", **{key: record[key] for key in ROUND_KEYS if key in record}}
    event["parties"] = len(record["parties"])
    if accuracy is not None:
        event["accuracy_raw"], event["accuracy_calibrated"] = accuracy["raw"], accuracy["calibrated"]
    if "bytes_per_party" in record:
        event["bytes_sent"], event["bytes_received"] = (record["bytes_per_party"][key] for key in ("sent", "received"))
    return event


class RunLog:
    """Appends events to ``path`` (JSON lines) and their numbers to TensorBoard when it is installed.

    A run that is resumed appends to the same file; every line carries the time it was written."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.scalars = None
        if importlib.util.find_spec("tensorboard") is not None:
            from tensorboard.summary import Writer

            self.scalars = Writer(str(self.path.with_suffix("")) + ".tensorboard")

    def write(self, event: dict) -> None:
        with self.path.open("a") as file:  # opened per event: a run writes a few per round, a server many runs
            file.write(json.dumps({"time": round(time.time(), 3), **event}) + "\n")
        if self.scalars is not None and "round" in event:
            for key, value in event.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key != "round":
                    self.scalars.add_scalar(key, value, step=event["round"])
            self.scalars.flush()

    def close(self) -> None:
        if self.scalars is not None:
            self.scalars.close()

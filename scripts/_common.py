"""Helpers the scripts share: waiting for a server, best-of-N timing, a task's first held-out rows.

The scripts run as ``python scripts/NAME.py``, which puts this folder on ``sys.path``, so they import it as
``from _common import ...``. The shell scripts wait for their server with

    .venv/bin/python scripts/_common.py wait-ready URL
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    from fedbpt.objective import PromptedModel

T = TypeVar("T")


def wait_until_ready(url: str, process: Popen | None = None, log: Path | None = None, seconds: float = 30) -> None:
    """Poll ``url``/readyz until it answers 200. RuntimeError if ``process`` (the server) exits first, with its
    ``log`` in the message, or if it is not ready after ``seconds``."""
    import httpx  # here: the scripts that only time models need not load it

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text() if log else f'code {process.returncode}'}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not become ready in {seconds:g} s")


def best_times(runs: dict[str, Callable[[], T]], repeats: int) -> tuple[dict[str, T], dict[str, float]]:
    """Each run's output (from a warm-up call) and its best time of ``repeats``; the runs take turns in every
    repeat, so all see the same machine load."""
    outputs = {name: run() for name, run in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return outputs, {name: min(values) for name, values in times.items()}


def held_out(model: PromptedModel, examples: int) -> tuple[list, list, np.ndarray]:
    """The first ``examples`` held-out rows of the model's task (0 = all), encoded by the model, and their labels."""
    rows = model.task.load_eval()
    rows = rows[:examples] if examples else rows
    return rows, model.encode(rows), np.array([row.label for row in rows])


if __name__ == "__main__":
    if sys.argv[1:2] != ["wait-ready"] or len(sys.argv) != 3:
        sys.exit("usage: python scripts/_common.py wait-ready URL")
    try:
        wait_until_ready(sys.argv[2])
    except RuntimeError as error:
        sys.exit(str(error))

"""What an operator follows: one structured log line per event (a job created, a party added, a round closed
with its counts and time) and each job's event log, the JSON lines of ``fedbpt.tracking`` that ``fedbpt
simulate`` writes too, under the settings' events folder."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from fedbpt.tracking import RunLog

logger = logging.getLogger("fedbpt.server")


def configure_logging() -> None:
    """Send the server's own lines to stderr beside uvicorn's (uvicorn configures only its own loggers)."""
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s fedbpt %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def logfmt(event: dict) -> str:
    """``event=round job=ab12 round=3 loss=0.6421``: the event's plain values (the spec and lists are left out)."""
    fields = []
    for key, value in event.items():
        if isinstance(value, float):
            fields.append(f"{key}={value:.4g}")
        elif isinstance(value, str | int | bool) or value is None:
            fields.append(f"{key}={json.dumps(value) if isinstance(value, str) and ' ' in value else value}")
    return " ".join(fields)


class Journal:
    def __init__(self, folder: Path | None):
        self.folder = folder
        self._logs: dict[str, RunLog] = {}

    def write(self, job_id: str, event: dict) -> None:
        event = {"event": event["event"], "job": job_id, **event}
        logger.info(logfmt(event))
        if self.folder is not None:
            if job_id not in self._logs:
                self._logs[job_id] = RunLog(self.folder / f"{job_id}.events.jsonl")
            self._logs[job_id].write(event)

    def close(self) -> None:
        for log in self._logs.values():
            log.close()

"""Wakes long-polling parties when a job's round changes (called from worker threads)."""

from __future__ import annotations

import asyncio


class RoundEvents:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: dict[str, asyncio.Event] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def event(self, job_id: str) -> asyncio.Event:
        """Take the event before reading the state: a change after the read still sets it."""
        return self._events.setdefault(job_id, asyncio.Event())

    def notify(self, job_id: str) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._fire, job_id)

    def _fire(self, job_id: str) -> None:
        event = self._events.pop(job_id, None)
        if event is not None:
            event.set()

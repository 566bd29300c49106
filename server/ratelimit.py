"""Rate limiting of failed authentication per client address: a 429 with ``Retry-After`` once an address has
failed ``FEDBPT_AUTH_FAILURES`` times within ``FEDBPT_AUTH_WINDOW_S``.

A failure is any 401 the app answers: a missing or wrong administrator token, an unknown or revoked party
token, a wrong or expired enrollment secret. Only failures count, so a busy party is never limited. A blocked
address is refused whatever it sends, a right token included: a guesser that got 429 for wrong guesses and 200
for the right one would still learn it. The health and metrics routes stay open, so that probes from a proxy's
address keep working.

The counts are kept in memory, on the event loop (no lock): one server process is the design (see
server/service.py), and a restart that forgets them is harmless. Behind a reverse proxy the client address is
the proxy's unless uvicorn trusts its headers (``--proxy-headers --forwarded-allow-ips``; see the README).
"""

from __future__ import annotations

import math
import time
from collections import deque

from starlette.types import ASGIApp, Receive, Scope, Send

from server import errors

PROBES = frozenset({"/healthz", "/readyz", "/metrics"})


class FailureLimiter:
    """The last ``limit`` failures of each address; it is blocked while all of them are within the window."""

    def __init__(self, limit: int, window_s: float, clock=time.monotonic):
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._failures: dict[str, deque[float]] = {}
        self._swept = clock()

    def blocked_for(self, address: str) -> float:
        """Seconds until ``address`` may try again; 0 when it is not blocked."""
        failures = self._failures.get(address)
        if failures is None or len(failures) < self.limit:
            return 0.0
        return max(0.0, failures[0] + self.window_s - self.clock())

    def note_failure(self, address: str) -> None:
        now = self.clock()
        if now - self._swept > self.window_s:  # forget quiet addresses, at most once a window
            self._failures = {key: times for key, times in self._failures.items() if times[-1] > now - self.window_s}
            self._swept = now
        self._failures.setdefault(address, deque(maxlen=self.limit)).append(now)


class AuthFailureLimit:
    """The ASGI middleware: refuses a blocked address with 429 and counts the 401s the app answers."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            return await self.app(scope, receive, send)
        limiter: FailureLimiter = scope["app"].state.auth_failures
        address = (scope.get("client") or ("unknown",))[0]
        wait = math.ceil(limiter.blocked_for(address))
        if wait > 0:
            message = f"too many failed authentications from {address}; try again in {wait} s"
            response = errors.error_response(429, "too_many_failures", message)
            response.headers.update({"Retry-After": str(wait), "Connection": "close"})  # its body is not read
            return await response(scope, receive, send)

        async def send_and_count_failures(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                limiter.note_failure(address)
            await send(message)

        await self.app(scope, receive, send_and_count_failures)

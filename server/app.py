"""The FastAPI app: ``uvicorn server.app:app`` (settings from the environment, see server/settings.py)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from functools import partial

import swagger_ui_bundle
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from server import auth, errors
from server.events import RoundEvents
from server.journal import Journal, configure_logging
from server.metrics import Metrics
from server.ratelimit import PROBES, AuthFailureLimit, FailureLimiter
from server.routers import dashboard, jobs, ops, results, rounds
from server.service import Coordinator
from server.settings import Settings
from server.store import Store

logger = logging.getLogger("fedbpt.server")


SMALL_BODY_BYTES = 16 * 1024  # read before the token is checked (a party's report is about 4 KB)
TOKENLESS_ROUTES = frozenset({"/v1/enroll", *PROBES})


class BodyLimit:
    """Reads each request's body before the app sees it, and refuses without reading the rest of it: a body over
    the settings' limit, declared or not (413); one that has not arrived within ``body_timeout_s`` (408: a stalled
    or trickling client must not hold a connection); and, before reading a body of unknown length or over
    ``SMALL_BODY_BYTES``, one whose bearer token is no one's (401), so that strangers cannot make the server read
    megabytes. The routes' own dependencies then check the token as before."""

    def __init__(self, app: ASGIApp, refusal_before_body: Callable[[str | None, State], errors.Refusal | None]):
        self.app = app
        self.refusal_before_body = refusal_before_body  # (the Authorization header, the app's state) -> a refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state, headers = scope["app"].state, dict(scope["headers"])
        limit = state.settings.max_body_bytes
        declared = headers.get(b"content-length", b"")
        length = int(declared) if declared.isdigit() else None
        if length is not None and length > limit:
            return await self._too_large(limit, scope, receive, send)
        unknown_length = length is None and b"transfer-encoding" in headers
        if (unknown_length or (length or 0) > SMALL_BODY_BYTES) and scope["path"] not in TOKENLESS_ROUTES:
            authorization = headers.get(b"authorization", b"").decode("latin-1") or None
            refusal = self.refusal_before_body(authorization, state)
            if refusal is not None:
                return await _refuse_unread(refusal.status, refusal.code, refusal.message, scope, receive, send)
        try:
            async with asyncio.timeout(state.settings.body_timeout_s):
                body = await self._read(receive, limit)
        except TimeoutError:
            message = f"the body did not arrive within {state.settings.body_timeout_s:g} s (FEDBPT_BODY_TIMEOUT_S)"
            return await _refuse_unread(408, "body_timeout", message, scope, receive, send)
        if body is None:
            return await self._too_large(limit, scope, receive, send)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _read(receive: Receive, limit: int) -> bytes | None:
        """The whole body, or None as soon as it exceeds ``limit``."""
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return None
        return body

    @staticmethod
    async def _too_large(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body exceeds {limit} bytes (FEDBPT_MAX_BODY_BYTES)"
        await errors.error_response(413, "body_too_large", message)(scope, receive, send)


async def _refuse_unread(status: int, code: str, message: str, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer a request whose body is left unread, and close the connection rather than drain the rest of it."""
    response = errors.error_response(status, code, message)
    response.headers["Connection"] = "close"
    await response(scope, receive, send)


class Timed:
    """Observes every request's latency in the Prometheus histogram, by method, route template and status.

    A plain ASGI middleware: Starlette's ``@app.middleware("http")`` would wrap each request in extra tasks
    and streams, which cost about a quarter of a small request's server time."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def send_and_note_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, send_and_note_status)
        route = getattr(scope.get("route"), "path", "unmatched")  # the router records the matched route here
        latency = scope["app"].state.metrics.latency.labels(scope["method"], route, str(status))
        latency.observe(time.perf_counter() - started)


def _unknown_token(authorization: str | None, state: State) -> errors.Refusal | None:
    return auth.refusal_before_body(authorization, state.settings, state.coordinator)


def _tune_garbage_collector() -> None:
    """Keep the collector's pauses short. With a thousand parties the server holds some 100,000 objects for
    their connections and long-polls; with CPython's defaults a full collection walked them all every few
    seconds, pausing every request for 50-300 ms (measured with scripts/bench_server.py). What lives as long
    as the server (modules, the app) is frozen out of collections, and a larger young generation lets each
    request's objects die before they are promoted: no full collection ran during the benchmark."""
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


async def _close_overdue_rounds(app: FastAPI) -> None:
    while True:
        try:
            await run_in_threadpool(app.state.coordinator.close_overdue)
        except Exception:  # keep checking: one failing job must not stop every other job's deadlines
            logger.exception("closing overdue rounds failed; retrying")
        await asyncio.sleep(app.state.settings.deadline_check_s)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; without ``settings`` they are read from the environment when it starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = settings or Settings.from_env()
        app.state.auth_failures = FailureLimiter(app.state.settings.auth_failures, app.state.settings.auth_window_s)
        app.state.store = Store(app.state.settings.database)
        app.state.events.bind(asyncio.get_running_loop())
        configure_logging()
        journal = Journal(app.state.settings.events_folder)
        app.state.coordinator = Coordinator(app.state.store, app.state.metrics, app.state.events.notify, journal)
        task = asyncio.create_task(_close_overdue_rounds(app))
        _tune_garbage_collector()
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        app.state.store.close()
        journal.close()

    app = FastAPI(
        title="fedbpt server",
        description="Coordinates black-box federated prompt tuning (FedBPT) jobs over HTTP. Every refusal is an "
        '`Error`, `{"error": {"status", "code", "message"}}`; a method that a path does not list is '
        "answered 405 with an `Allow` header.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served below from the package's own Swagger UI files: /docs works without internet
        redoc_url=None,
    )
    app.state.metrics = Metrics()
    app.state.events = RoundEvents()
    errors.install(app)
    app.openapi = partial(errors.openapi, app)
    for module in (jobs, rounds, results, ops, dashboard):
        app.include_router(module.router)
    app.mount("/dashboard/assets", StaticFiles(directory=dashboard.ASSETS), name="dashboard-assets")
    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title}: API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )

    app.add_middleware(Timed)
    app.add_middleware(BodyLimit, refusal_before_body=_unknown_token)  # refused bodies are not timed
    app.add_middleware(AuthFailureLimit)  # outside BodyLimit: its 401s count too
    app.add_middleware(errors.OneLineStartupError)
    return app


app = create_app()

"""Health, readiness and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.auth import coordinator
from server.errors import Refusal
from server.schemas import refusals
from server.service import Coordinator

router = APIRouter(tags=["ops"])
logger = logging.getLogger("fedbpt.server")


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", responses=refusals(503))
def readyz(service: Coordinator = Depends(coordinator)) -> dict:
    try:
        service.store.ping()
    except Exception as error:  # any database failure means "not ready"; its detail (paths, SQL) is for the log only
        logger.error("readiness check failed: the database is not available: %s: %s", type(error).__name__, error)
        raise Refusal(503, "not_ready", "the database is not available; see the server log") from None
    return {"status": "ready"}


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> Response:
    """The Prometheus text exposition format."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

"""Health, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.auth import coordinator
from server.errors import Refusal
from server.service import Coordinator

router = APIRouter(tags=["ops"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(service: Coordinator = Depends(coordinator)) -> dict:
    try:
        service.store.ping()
    except Exception as error:  # any database failure means "not ready"
        raise Refusal(503, "not_ready", f"database unavailable: {error}") from None
    return {"status": "ready"}


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

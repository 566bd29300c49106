"""The live dashboard: its page and assets (all served from the package, no internet needed), the data it polls,
and the read-only viewer tokens the administrator issues for it."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from server.auth import coordinator, require_admin, require_viewer
from server.schemas import Viewer, ViewerIn, refusals
from server.service import Coordinator

ASSETS = Path(__file__).resolve().parents[1] / "dashboard"
router = APIRouter(tags=["dashboard"], responses=refusals(429))
viewer = [Depends(require_viewer)]


@router.get("/dashboard", include_in_schema=False)
def page() -> FileResponse:
    """The page holds no data: it asks for a token and then polls the routes below."""
    return FileResponse(ASSETS / "index.html")


@router.get("/v1/dashboard/jobs", dependencies=viewer, responses=refusals(401, 403))
def jobs(service: Coordinator = Depends(coordinator)) -> list[dict]:
    """Every job's view (status, round, step, spec), newest first."""
    return [service.view(job) for job in reversed(service.store.jobs())]


@router.get("/v1/dashboard/jobs/{job_id}", dependencies=viewer, responses=refusals(401, 403, 404))
def job(job_id: str, service: Coordinator = Depends(coordinator)) -> dict:
    """A job as the dashboard shows it: its history, the open round's progress and deadline, its parties."""
    return service.dashboard(job_id)


@router.post(
    "/v1/viewers", status_code=201, dependencies=[Depends(require_admin)], responses=refusals(401, 403, 409, 422)
)
def add_viewer(body: ViewerIn, service: Coordinator = Depends(coordinator)) -> Viewer:
    """A viewer token: read-only access to every job's dashboard (no spec changes, no prompts, no reports)."""
    return service.add_viewer(body.name)


@router.delete("/v1/viewers/{name}", dependencies=[Depends(require_admin)], responses=refusals(401, 403, 404))
def remove_viewer(name: str, service: Coordinator = Depends(coordinator)) -> Viewer:
    """The viewer's token stops working at once."""
    return service.remove_viewer(name)

"""Round history and prompt downloads: for the administrator and the job's parties."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends

from server.auth import coordinator, job_reader
from server.schemas import Prompt
from server.service import Coordinator

router = APIRouter(prefix="/v1", tags=["results"])


@router.get("/jobs/{job_id}/history", dependencies=[Depends(job_reader)])
def history(job_id: str, service: Coordinator = Depends(coordinator)) -> dict:
    """Every closed round: parties, training fitness, sigma, timing and the parties' reported accuracy."""
    return service.history(job_id)


@router.get("/jobs/{job_id}/prompt", dependencies=[Depends(job_reader)])
def prompt(
    job_id: str, which: Literal["final", "best"] = "final", service: Coordinator = Depends(coordinator)
) -> Prompt:
    """The final (or best-evaluated) prompt z with the spec that rebuilds it: save it for ``fedbpt predict``."""
    return service.prompt(job_id, which)

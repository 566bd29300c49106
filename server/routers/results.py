"""Round history and prompt downloads: for the administrator and the job's parties."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends

from server.auth import coordinator, job_reader
from server.schemas import Prompt, refusals
from server.service import Coordinator

router = APIRouter(prefix="/v1", tags=["results"], responses=refusals(401, 403, 404, 429))


@router.get("/jobs/{job_id}/history", dependencies=[Depends(job_reader)])
def history(job_id: str, service: Coordinator = Depends(coordinator)) -> dict:
    """Every closed round's record (keyed by its round: 0 start, 1..R search, R + 1 final), the chosen start,
    the best prompt so far and the parties' pooled held-out accuracy of each prompt round."""
    return service.history(job_id)


@router.get(
    "/jobs/{job_id}/prompt",
    dependencies=[Depends(job_reader)],
    responses=refusals(409, 422, codes={409: "no_prompt_yet: the job is still choosing its start"}),
)
def prompt(job_id: str, which: Literal["best", "last"] = "best", service: Coordinator = Depends(coordinator)) -> Prompt:
    """The best prompt so far by pooled training loss (what a job returns), or the last global prompt, with the
    spec that rebuilds it: save it for ``fedbpt evaluate`` and ``fedbpt predict``."""
    return service.prompt(job_id, which)

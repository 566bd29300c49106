"""What a party does: learn who it is, fetch (or wait for) the round, submit reports and evaluations."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BeforeValidator

from fedbpt.spec import LAST_ROUND
from server.auth import coordinator, current_party, job_party
from server.errors import Refusal
from server.schemas import Accepted, EvaluationIn, Me, Report, RoundInfo, Spec, refusals
from server.service import Coordinator

router = APIRouter(prefix="/v1", tags=["rounds"], responses=refusals(401, 403, 429))
NOT_A_ROUTE = "not_found: the path names no route (a job id of another job is a 403)"


def _digits(value: object) -> object:
    """A round in the path is written in digits: "2.0" or "+2" is not round 2."""
    if isinstance(value, str) and not value.isdigit():
        raise ValueError(f"a round number is written in digits, such as 2; got {value!r}")
    return value


RoundNumber = Annotated[int, BeforeValidator(_digits), Path(ge=0, le=LAST_ROUND)]


@router.get("/me")
async def me(party: dict = Depends(current_party)) -> Me:
    return Me(job=party["job_id"], party=party["name"], index=party["idx"])


@router.get("/jobs/{job_id}/spec", dependencies=[Depends(job_party)], responses=refusals(404, codes={404: NOT_A_ROUTE}))
def spec(job_id: str, service: Coordinator = Depends(coordinator)) -> Spec:
    return service.job(job_id)["spec"]


@router.get("/jobs/{job_id}/round", response_model=RoundInfo, responses=refusals(404, 422, codes={404: NOT_A_ROUTE}))
async def current_round(
    job_id: str,
    request: Request,
    after: int = Query(-1, ge=-1, le=LAST_ROUND, description="wait while the open round is at most this"),
    wait: float = Query(0.0, ge=0, le=86_400, description="seconds to hold the request waiting for a newer round"),
    party: dict = Depends(job_party),
    service: Coordinator = Depends(coordinator),
) -> Response:
    """The open round; with ``after`` and ``wait``, a long-poll that answers as soon as the round passes ``after``."""
    events = request.app.state.events
    give_up = time.monotonic() + min(wait, request.app.state.settings.max_wait_s)
    while True:
        changed = events.event(job_id)
        view = service.round_view(job_id)
        remaining = give_up - time.monotonic()
        if view.round > after or view.status != "running" or remaining <= 0:
            return Response(view.answer(party["name"]), media_type="application/json")
        try:
            await asyncio.wait_for(changed.wait(), remaining)
        except TimeoutError:
            pass


@router.post(
    "/jobs/{job_id}/rounds/{round_number}/reports",
    status_code=201,
    responses={200: {"model": Accepted, "description": "this report again: nothing changes"}}
    | refusals(
        404,
        408,
        409,
        413,
        422,
        codes={
            404: NOT_A_ROUTE,
            409: "stale_round, future_round: not the open round; conflicting_report: another report is in; "
            "job_not_running",
            422: "invalid_request; invalid_report: it does not fit the job or the round; round_mismatch",
        },
    ),
)
async def submit_report(
    job_id: str,
    report: Report,
    response: Response,
    round_number: RoundNumber,
    party: dict = Depends(job_party),
    service: Coordinator = Depends(coordinator),
) -> Accepted:
    """Submit this party's report for the open round (201): its update in a search round, its losses in the start
    and final rounds (``fedbpt.rounds.report_body``). Resending the same report answers 200.

    What the schema cannot say, because it depends on the job and its open round: the body's round is the path's,
    its kind is the round's, ``mean`` has the job's prompt.dim numbers with a norm of at most 1e4, ``sigmas`` has
    at most search.iterations entries and ``losses`` one per candidate of the round."""
    if report.round != round_number:
        raise Refusal(422, "round_mismatch", f"the body says round {report.round}, the path says {round_number}")
    accepted = await service.submit(job_id, party["name"], round_number, report.model_dump())
    if accepted["duplicate"]:
        response.status_code = 200
    return accepted


@router.post(
    "/jobs/{job_id}/rounds/{round_number}/evaluations",
    status_code=201,
    responses={200: {"description": "this evaluation again: nothing changes"}}
    | refusals(
        404,
        408,
        409,
        413,
        422,
        codes={
            404: NOT_A_ROUTE,
            409: "future_round: no prompt after that round yet; conflicting_evaluation",
            422: "invalid_request; no_such_prompt: the job has fewer rounds",
        },
    ),
)
async def submit_evaluation(
    job_id: str,
    evaluation: EvaluationIn,
    response: Response,
    round_number: RoundNumber,  # the round after which the evaluated prompt was the global one
    party: dict = Depends(job_party),
    service: Coordinator = Depends(coordinator),
) -> dict:
    """Report this party's held-out accuracy of the prompt after round ``round_number`` (a round message's
    ``mean_round``; 0 = the chosen start), optionally raw and calibrated, and the bare template's (zero-shot)."""
    if not await service.evaluate(job_id, party["name"], round_number, evaluation.model_dump(exclude_none=True)):
        response.status_code = 200
    return {"job": job_id, "party": party["name"], "round": round_number}

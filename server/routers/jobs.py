"""Jobs and their parties: administrator routes (plus redeeming an enrollment secret)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from server.auth import coordinator, require_admin, settings
from server.schemas import EnrollIn, Enrollment, Job, PartyIn, PartyToken, Revoked, Spec, refusals
from server.service import Coordinator
from server.settings import Settings

router = APIRouter(prefix="/v1", tags=["jobs"], responses=refusals(429))
admin = [Depends(require_admin)]
NEW_PARTY_REFUSALS = refusals(
    401,
    403,
    404,
    409,
    408,
    413,
    422,
    codes={409: "job_not_running: the job is over; party_exists: the name has a token"},
)


@router.post(
    "/jobs",
    status_code=201,
    dependencies=admin,
    responses=refusals(401, 403, 408, 413, 422, codes={422: "invalid_request; unpinned_spec: the spec is not pinned"}),
)
def create_job(spec: Spec, service: Coordinator = Depends(coordinator)) -> Job:
    """Create a job from a spec pinned to its model (``fedbpt job create`` loads the model and pins it)."""
    return service.create_job(spec)


@router.get("/jobs", dependencies=admin, responses=refusals(401, 403))
def list_jobs(service: Coordinator = Depends(coordinator)) -> list[Job]:
    return [service.view(job) for job in service.store.jobs()]


@router.get("/jobs/{job_id}", dependencies=admin, responses=refusals(401, 403, 404))
def get_job(job_id: str, service: Coordinator = Depends(coordinator)) -> Job:
    return service.view(service.job(job_id))


@router.post(
    "/jobs/{job_id}/cancel",
    dependencies=admin,
    responses=refusals(401, 403, 404, 409, codes={409: "job_not_running: the job is already over"}),
)
def cancel_job(job_id: str, service: Coordinator = Depends(coordinator)) -> Job:
    return service.cancel(job_id)


@router.post("/jobs/{job_id}/parties", status_code=201, dependencies=admin, responses=NEW_PARTY_REFUSALS)
def add_party(job_id: str, party: PartyIn, service: Coordinator = Depends(coordinator)) -> PartyToken:
    """Issue a party token (shown once; stored hashed). A party whose token was revoked is re-added this way."""
    return service.add_party(job_id, party.name)


@router.post("/jobs/{job_id}/enrollments", status_code=201, dependencies=admin, responses=NEW_PARTY_REFUSALS)
def add_enrollment(
    job_id: str,
    party: PartyIn,
    service: Coordinator = Depends(coordinator),
    config: Settings = Depends(settings),
) -> Enrollment:
    """Issue a one-time enrollment secret that the party redeems for its token within FEDBPT_ENROLLMENT_TTL_S. A
    party without a token (its secret expired, or its token was revoked) gets a new secret this way."""
    return service.add_enrollment(job_id, party.name, config.enrollment_ttl_s)


@router.delete(
    "/jobs/{job_id}/parties/{name}/token",
    dependencies=admin,
    responses=refusals(401, 403, 404, codes={404: "unknown_job, unknown_party; not_found: no such route"}),
)
def revoke_token(job_id: str, name: str, service: Coordinator = Depends(coordinator)) -> Revoked:
    """Revoke the party's token and its unredeemed enrollment secrets, at once and for good (it is stored). To let
    the party rejoin, add it again by name (``POST .../parties`` or ``.../enrollments``)."""
    return service.revoke(job_id, name)


@router.post(
    "/enroll",
    status_code=201,
    responses=refusals(
        401,
        408,
        409,
        413,
        422,
        codes={401: "bad_secret, secret_expired: ask the administrator for a new secret", 409: "secret_used"},
    ),
)
def enroll(body: EnrollIn, service: Coordinator = Depends(coordinator)) -> PartyToken:
    return service.redeem(body.secret)

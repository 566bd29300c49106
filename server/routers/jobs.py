"""Jobs and their parties: administrator routes (plus redeeming an enrollment secret)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from server.auth import coordinator, require_admin
from server.schemas import EnrollIn, Enrollment, Job, PartyIn, PartyToken, Spec
from server.service import Coordinator

router = APIRouter(prefix="/v1", tags=["jobs"])
admin = [Depends(require_admin)]


@router.post("/jobs", status_code=201, dependencies=admin)
def create_job(spec: Spec, service: Coordinator = Depends(coordinator)) -> Job:
    """Create a job from a spec pinned to its model (``fedbpt job create`` loads the model and pins it)."""
    return service.create_job(spec)


@router.get("/jobs", dependencies=admin)
def list_jobs(service: Coordinator = Depends(coordinator)) -> list[Job]:
    return [service.view(job) for job in service.store.jobs()]


@router.get("/jobs/{job_id}", dependencies=admin)
def get_job(job_id: str, service: Coordinator = Depends(coordinator)) -> Job:
    return service.view(service.job(job_id))


@router.post("/jobs/{job_id}/cancel", dependencies=admin)
def cancel_job(job_id: str, service: Coordinator = Depends(coordinator)) -> Job:
    return service.cancel(job_id)


@router.post("/jobs/{job_id}/parties", status_code=201, dependencies=admin)
def add_party(job_id: str, party: PartyIn, service: Coordinator = Depends(coordinator)) -> PartyToken:
    """Issue a party token (shown once; stored hashed)."""
    return service.add_party(job_id, party.name)


@router.post("/jobs/{job_id}/enrollments", status_code=201, dependencies=admin)
def add_enrollment(job_id: str, party: PartyIn, service: Coordinator = Depends(coordinator)) -> Enrollment:
    """Issue a one-time enrollment secret that the party redeems for its token."""
    return service.add_enrollment(job_id, party.name)


@router.post("/enroll", status_code=201)
def enroll(body: EnrollIn, service: Coordinator = Depends(coordinator)) -> PartyToken:
    return service.redeem(body.secret)

"""Bearer-token dependencies: the admin scope and the party scope are separate.

They are ``async def`` because none of them waits on anything (the token lookup is an in-memory map):
FastAPI would run a plain ``def`` dependency in its threadpool, a thread hop per dependency per request."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from server.errors import Refusal
from server.service import Coordinator
from server.settings import Settings

bearer = HTTPBearer(auto_error=False)


async def settings(request: Request) -> Settings:
    return request.app.state.settings


async def coordinator(request: Request) -> Coordinator:
    return request.app.state.coordinator


def bearer_token(credentials: HTTPAuthorizationCredentials | None) -> str:
    """The token a request presents (the coordinator's and the prediction server's routes check it)."""
    if credentials is None or not credentials.credentials:
        raise Refusal(401, "missing_token", "send 'Authorization: Bearer <token>'")
    return credentials.credentials


def _is_admin(token: str, config: Settings) -> bool:
    return hmac.compare_digest(token.encode(), config.admin_token.encode())


def _unknown(token: str, service: Coordinator, message: str) -> Refusal:
    """The 401 for a token that is no one's: it says so when the token is a revoked party token."""
    if service.was_revoked(token):
        return Refusal(401, "revoked_token", "this party token was revoked; ask the administrator for a new one")
    return Refusal(401, "bad_token", message)


def refusal_before_body(authorization: str | None, config: Settings, service: Coordinator) -> Refusal | None:
    """For a request whose body is not read yet: a 401 unless it sends the administrator's or a party's token.
    The route's own dependency still checks that it is the right one."""
    scheme, token = get_authorization_scheme_param(authorization)
    if scheme.lower() != "bearer" or not token:
        return Refusal(401, "missing_token", "send 'Authorization: Bearer <token>'")
    if _is_admin(token, config) or service.party_for_token(token) is not None:
        return None
    return _unknown(token, service, "unknown token; send the administrator token or a party token")


async def require_admin(
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    config: Settings = Depends(settings),
    service: Coordinator = Depends(coordinator),
) -> None:
    token = bearer_token(credentials)
    if _is_admin(token, config):
        return
    if service.party_for_token(token) is not None:
        raise Refusal(403, "admin_only", "this route needs the administrator token, not a party token")
    raise _unknown(token, service, "wrong administrator token")


async def current_party(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    config: Settings = Depends(settings),
    service: Coordinator = Depends(coordinator),
) -> dict:
    token = bearer_token(credentials)
    party = service.party_for_token(token)
    if party is None and _is_admin(token, config):
        raise Refusal(403, "party_only", "this route is for parties: use a party token, not the administrator's")
    if party is None:
        raise _unknown(token, service, "unknown token; ask the administrator for a party token")
    service.saw(party, request.headers.get("user-agent", ""))
    return party


async def job_party(job_id: str, party: dict = Depends(current_party)) -> dict:
    """The calling party, which must belong to the job in the path."""
    if party["job_id"] != job_id:
        raise Refusal(403, "wrong_job", f"this token belongs to another job, not to {job_id}")
    return party


async def job_reader(
    job_id: str,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    config: Settings = Depends(settings),
    service: Coordinator = Depends(coordinator),
) -> None:
    """The administrator, or a party of the job in the path."""
    token = bearer_token(credentials)
    if _is_admin(token, config):
        return
    party = service.party_for_token(token)
    if party is None:
        raise _unknown(token, service, "unknown token; use the administrator token or a party token of this job")
    if party["job_id"] != job_id:
        raise Refusal(403, "wrong_job", f"this token belongs to another job, not to {job_id}")


async def require_viewer(
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    config: Settings = Depends(settings),
    service: Coordinator = Depends(coordinator),
) -> None:
    """The administrator, or a viewer (``POST /v1/viewers``): read-only access to the dashboard."""
    token = bearer_token(credentials)
    if _is_admin(token, config) or service.viewer_for_token(token) is not None:
        return
    if service.party_for_token(token) is not None:
        raise Refusal(403, "viewer_only", "the dashboard needs the administrator token or a viewer token")
    raise _unknown(token, service, "unknown token; use the administrator token or a viewer token")

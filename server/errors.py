"""One JSON error shape for every failure: {"error": {"status", "code", "message"}}; a startup that fails on an
ordinary mistake is one log line."""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from fedbpt.errors import UserError


class Refusal(Exception):
    """A request the server refuses; answered as {"error": {status, code, message}}."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"status": status, "code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _explain(error: dict) -> str:
    if error["type"] == "json_invalid":  # its loc ends with a character offset, not a field
        reason = error.get("ctx", {}).get("error", "decode error")
        return f"the body is not valid JSON: {reason} at character {error['loc'][-1]}"
    where = ".".join(str(part) for part in error["loc"] if part != "body")
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "value_error" and not where:  # the job spec's own error, which names its keys
        return message
    return f"{where or 'body'}: {message}"


def _describe(errors: list[dict]) -> str:
    return "; ".join(_explain(error) for error in errors[:5])


def _unparsable(cause: BaseException | None) -> str | None:
    """Why a body that FastAPI could not parse is not JSON, for the causes that its generic 400 ("There was an
    error parsing the body") hides; None for any other cause."""
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not valid JSON: it is not UTF-8 text (invalid byte at position {cause.start})"
    if isinstance(cause, RecursionError):
        return "the body is not valid JSON that can be read: its arrays or objects nest too deeply"
    return None


def _allowed_methods(request: Request, error: HTTPException) -> str:
    """Every method of the request's path: the OpenAPI spec's for its path template (Starlette's own 405 names the
    first matching route's alone: GET but not POST for /v1/jobs), or Starlette's for a route the spec leaves out."""
    methods = set()
    for template, operations in request.app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), request.scope["path"]):
            methods |= {method.upper() for method in operations} | ({"HEAD"} if "get" in operations else set())
    return ", ".join(sorted(methods)) if methods else (error.headers or {}).get("Allow", "")


def install(app: FastAPI) -> None:
    @app.exception_handler(Refusal)
    async def api_error(_: Request, error: Refusal) -> JSONResponse:
        return error_response(error.status, error.code, error.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _describe(error.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 400 and (reason := _unparsable(error.__cause__)):  # FastAPI raises it "from" the cause
            return error_response(422, "invalid_request", reason)
        if error.status_code == 405:
            message = f"{request.method} is not a method of {request.url.path}"
            return error_response(405, "method_not_allowed", message, {"Allow": _allowed_methods(request, error)})
        code = {404: "not_found"}.get(error.status_code, "http_error")
        return error_response(error.status_code, code, str(error.detail), error.headers)


class OneLineStartupError:
    """Reports a startup that fails on an ordinary mistake (a ``UserError``: no prompt file, no model) as one
    line, ``error: ...``, where uvicorn would log Starlette's traceback of it."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)
        failure = None

        async def hold_startup_failure(message: dict) -> None:
            nonlocal failure
            if message["type"] == "lifespan.startup.failed":
                failure = message
            else:
                await send(message)

        try:
            await self.app(scope, receive, hold_startup_failure)
        except UserError as error:
            if failure is None:
                raise
            await send({"type": "lifespan.startup.failed", "message": f"error: {error}"})
        except BaseException:
            if failure is not None:
                await send(failure)
            raise


FASTAPIS_422 = {"$ref": "#/components/schemas/HTTPValidationError"}


def openapi(app: FastAPI) -> dict:
    """FastAPI's OpenAPI schema without the 422 it adds to every route with parameters: that one documents
    ``HTTPValidationError``, a shape this server never sends. Each route documents its own refusals in the one
    error shape (``server.schemas.refusals``)."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        for operation in (operation for path in schema["paths"].values() for operation in path.values()):
            fastapis = operation["responses"].get("422", {}).get("content", {}).get("application/json", {})
            if fastapis.get("schema") == FASTAPIS_422:
                del operation["responses"]["422"]
        for name in ("HTTPValidationError", "ValidationError"):
            schema["components"]["schemas"].pop(name, None)
    return app.openapi_schema

"""Errors as OperationOutcomes: ours (FHIRError) and the router's (404/405). The unexpected ones are
answered by the request middleware, which is where the request id lives."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from fhir_node.api.responses import outcome_response
from fhir_node.outcome import FHIRError, error

_HTTP_CODES = {404: "not-found", 405: "not-supported"}


async def fhir_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FHIRError)
    return outcome_response(exc.issues, exc.status, exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    text = {
        404: f"No FHIR endpoint at {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }
    issue = error(_HTTP_CODES.get(exc.status_code, "processing"), text.get(exc.status_code, str(exc.detail)))
    return outcome_response([issue], exc.status_code, dict(exc.headers or {}))


HANDLERS = {FHIRError: fhir_error, HTTPException: http_error}

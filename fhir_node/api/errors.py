"""Every error leaves as an OperationOutcome: ours (FHIRError), the router's (404/405), and the unexpected."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from fhir_node.api.responses import outcome_response
from fhir_node.outcome import FHIRError, error

log = logging.getLogger("fhir_node.errors")

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


async def unexpected(request: Request, exc: Exception) -> Response:
    """A bug, not bad input: logged with its traceback; the client gets the request id to report."""
    rid = request.scope.get("state", {}).get("request_id", "")
    log.exception("unhandled error in request %s", rid)
    return outcome_response([error("exception", f"Internal error; request id {rid}")], 500)


HANDLERS = {FHIRError: fhir_error, HTTPException: http_error, Exception: unexpected}

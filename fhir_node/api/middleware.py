"""Raw ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware): request id, access log, and the
answer to what nothing else answered (a lost database, a bug)."""

from __future__ import annotations

import ipaddress
import logging
import re
import time
import uuid

import orjson
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_node.outcome import error, operation_outcome
from fhir_node.rules.pseudonym import scrub

access_log = logging.getLogger("fhir_node.access")
error_log = logging.getLogger("fhir_node.errors")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RequestContext:
    """Gives each request an id (the client's X-Request-Id when sane), echoes it, logs one JSON line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _CLIENT_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        start = time.perf_counter()
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if started:  # nothing more can be said to the client
                raise
            await _unexpected(send_with_id, exc, rid)
        finally:
            path = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope["query_string"] else "")
            path = scrub(path)  # no SSIN in clear in a log (`identifier=ssin|...`)
            fields = {
                "request_id": rid,
                "method": scope["method"],
                "path": path,
                "status": status,
                "duration_ms": round((time.perf_counter() - start) * 1000, 3),
            }
            access_log.info("request", extra={"fields": fields})


def database_lost(exc: Exception) -> bool:
    """A lost database (503, the client may retry), not a bug of ours (500)."""
    return isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


async def _unexpected(send: Send, exc: Exception, rid: str) -> None:
    """A lost database is a 503 the client may retry; anything else is our bug: a 500 with the request id
    to report, and the traceback in the log."""
    if database_lost(exc):
        error_log.error("database unavailable in request %s: %s", rid, exc)
        await answer(send, 503, "transient", f"The database is unavailable; retry later (request id {rid})")
        return
    error_log.exception("unhandled error in request %s", rid, exc_info=exc)
    await answer(send, 500, "exception", f"Internal error; request id {rid}")


async def answer(send: Send, status: int, code: str, text: str, challenge: str = "") -> None:
    """A bare OperationOutcome answer, for the middleware layers (no Response object there)."""
    body = orjson.dumps(operation_outcome([error(code, text)]))
    headers = [(b"content-type", b"application/fhir+json"), (b"content-length", str(len(body)).encode())]
    if challenge:
        headers.append((b"www-authenticate", challenge.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

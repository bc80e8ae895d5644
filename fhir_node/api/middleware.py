"""Raw ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware): request id, access log, and the
answer to what nothing else answered (a client gone, a lost database, a bug: see `failures`)."""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import re
import time

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_node.api.failures import CLIENT_GONE, classify
from fhir_node.logs import access
from fhir_node.outcome import error, operation_outcome
from fhir_node.rules.pseudonym import scrub

error_log = logging.getLogger("fhir_node.errors")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")


@functools.lru_cache(maxsize=1024)
def is_loopback(host: str | None) -> bool:
    """Whether `host` is a loopback address (parsed once per address: a few microseconds each time)."""
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fhir_base(scope: Scope, configured: str | None) -> str:
    """The FHIR base URL for links and the audit's server: the configured public one, else the one the
    client used (its Host header, else the address it reached)."""
    if configured:
        return configured.rstrip("/")
    host = next((v for k, v in scope["headers"] if k == b"host"), b"")
    server = scope.get("server")
    return _client_base(scope["scheme"], host, scope.get("root_path", ""), tuple(server) if server else None)


@functools.lru_cache(maxsize=256)
def _client_base(scheme: str, host_header: bytes, root_path: str, server: tuple[str, int | None] | None) -> str:
    """`fhir_base` from what the client used, built once per such address (each request asks it twice)."""
    host = host_header.decode("latin-1")
    if not host:  # HTTP/1.0; a server on a Unix socket has no address
        name, port = server or ("localhost", None)
        host = name if port in (None, {"http": 80, "https": 443}.get(scheme)) else f"{name}:{port}"
    return f"{scheme}://{host}{root_path}/fhir"


class RequestContext:
    """Gives each request an id (the client's X-Request-Id when sane), echoes it, logs one JSON line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _CLIENT_ID.fullmatch(given) else os.urandom(16).hex()
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
            status = await _unexpected(send_with_id, exc, rid)
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
            access(fields)


async def _unexpected(send: Send, exc: Exception, rid: str) -> int:
    """The answer to a failure (see `failures.classify`), its status returned for the access log. A client
    that left gets nothing (its access-log line is all); a lost database is logged as an outage; anything
    unknown is our bug: a 500 with the request id to report, and the traceback in the log."""
    failure = classify(exc)
    if failure is None:
        error_log.exception("unhandled error in request %s", rid, exc_info=exc)
        await answer(send, 500, "exception", f"Internal error; request id {rid}")
        return 500
    if failure.status == CLIENT_GONE:
        return CLIENT_GONE
    if failure.outage:
        error_log.error("database unavailable in request %s: %s", rid, exc)
    await answer(send, failure.status, failure.code, f"{failure.text} (request id {rid})", headers=failure.headers)
    return failure.status


async def answer(
    send: Send, status: int, code: str, text: str, challenge: str = "", headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    """A bare OperationOutcome answer, for the middleware layers (no Response object there)."""
    body = orjson.dumps(operation_outcome([error(code, text)]))
    fields = [(b"content-type", b"application/fhir+json"), (b"content-length", str(len(body)).encode()), *headers]
    if challenge:
        fields.append((b"www-authenticate", challenge.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": fields})
    await send({"type": "http.response.body", "body": body})

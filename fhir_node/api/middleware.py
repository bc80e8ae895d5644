"""Raw ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware): request id, access log, loopback guard."""

from __future__ import annotations

import ipaddress
import logging
import re
import time
import uuid

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_node.outcome import error, operation_outcome

access_log = logging.getLogger("fhir_node.access")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RequestContext:
    """Gives each request an id (the client's X-Request-Id when sane), echoes it, logs one JSON line,
    and, when `loopback_only`, refuses anyone not on a loopback address (403)."""

    def __init__(self, app: ASGIApp, loopback_only: bool) -> None:
        self.app = app
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _CLIENT_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            client = scope.get("client")
            if self.loopback_only and not is_loopback(client[0] if client else None):
                await _refuse(send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            path = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope["query_string"] else "")
            fields = {
                "request_id": rid,
                "method": scope["method"],
                "path": path,
                "status": status,
                "duration_ms": round((time.perf_counter() - start) * 1000, 3),
            }
            access_log.info("request", extra={"fields": fields})


async def _refuse(send: Send) -> None:
    body = orjson.dumps(operation_outcome([error("forbidden", "FHIR_NODE_AUTH=none serves loopback clients only")]))
    headers = [(b"content-type", b"application/fhir+json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": body})

"""The page's only way to data: a FHIR request sent through the node's own ASGI app, in process, as the
caller. It passes the whole request path (request id, authentication, the access policy, the audit), so a
page shows exactly what the same FHIR call would answer, and every page that touches data leaves the same
AuditEvents a FHIR client would.

The caller is whoever sent the page request: its `Authorization` header (a bearer token, set by the
browser's sign-in proxy or by a script) is handed on unchanged, with its address and user agent, so the
audit names the same client. Nothing here reads the database."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
from starlette.requests import Request

#: Request headers the FHIR call inherits from the page request.
_FORWARDED = ("authorization", "user-agent")


@dataclass(frozen=True)
class Answer:
    """A FHIR answer: its status, parsed JSON body (an OperationOutcome on errors) and the challenge of a 401."""

    status: int
    body: dict[str, Any]
    challenge: str | None = None

    @property
    def ok(self) -> bool:
        return self.status < 300

    def diagnostics(self) -> str:
        """What an OperationOutcome says, in one line."""
        issues = self.body.get("issue", []) if self.body.get("resourceType") == "OperationOutcome" else []
        return "; ".join(i.get("diagnostics") or i.get("code", "") for i in issues) or f"HTTP {self.status}"


async def fhir_get(request: Request, path: str, params: list[tuple[str, str]] | None = None) -> Answer:
    """GET `/fhir/{path}?params` as the caller of `request`."""
    headers = {name: request.headers[name] for name in _FORWARDED if name in request.headers}
    headers["accept"] = "application/fhir+json"
    request_id = request.scope.get("state", {}).get("request_id")
    if request_id:
        headers["x-request-id"] = request_id
    client = request.client
    transport = httpx.ASGITransport(app=request.app, client=(client.host, client.port) if client else ("127.0.0.1", 0))
    origin = f"{request.url.scheme}://{request.url.netloc}"
    async with httpx.AsyncClient(transport=transport, base_url=origin) as http:
        url = f"/fhir/{path}" + (f"?{urlencode(params)}" if params else "")
        r = await http.get(url, headers=headers)
    body = orjson.loads(r.content) if r.content else {}
    return Answer(r.status_code, body, r.headers.get("www-authenticate"))

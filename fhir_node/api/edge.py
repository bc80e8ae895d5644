"""The HTTP edge, before authentication: only host names the node is known by (a page in a browser on
the same host cannot reach a loopback node by DNS rebinding, and no forged Host ends up in Location or
Bundle links), a query string that is UTF-8 once percent-decoded, a deadline for the request body, the
security headers every answer carries, and memory given back after a big body."""

from __future__ import annotations

import asyncio
from urllib.parse import unquote_to_bytes, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_node import memory
from fhir_node.api.failures import BodyTimeout
from fhir_node.api.middleware import answer, is_loopback
from fhir_node.settings import Settings

#: Answers carry health data: no cache keeps them, no browser sniffs them into something runnable, and
#: anything a browser might render (an HTML error page of a proxy, a resource's narrative) runs nothing.
SECURITY_HEADERS = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'; sandbox"),
)
_BODY_HEADERS = frozenset({b"content-length", b"transfer-encoding"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def allowed_hosts(settings: Settings) -> frozenset[str]:
    """The host names besides loopback ones: FHIR_NODE_BASE_URL's and FHIR_NODE_ALLOWED_HOSTS."""
    names = {name.strip().lower().rstrip(".") for name in (settings.allowed_hosts or "").split(",") if name.strip()}
    if settings.base_url:
        names.add((urlsplit(settings.base_url).hostname or "").lower())
    return frozenset(names - {""})


def host_name(header: str) -> str:
    """`Example.be:8443` -> `example.be`, `[::1]:8080` -> `::1`."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    name, _, port = header.rpartition(":")
    return (name if port.isdigit() else header).lower().rstrip(".")


class Edge:
    """Refuses unknown hosts and undecodable query strings (400), bounds the wait for the body (408, see
    `failures`), adds SECURITY_HEADERS."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        #: One set lookup answers most requests (parsing an IP address takes microseconds).
        self.hosts = allowed_hosts(settings) | LOOPBACK_NAMES | {"127.0.0.1", "::1"}
        self.body_timeout = settings.body_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":  # an answer's own choice (a web page's CSP) stands
                headers = message.get("headers", [])
                present = {name.lower() for name, _ in headers}
                message["headers"] = [*headers, *((k, v) for k, v in SECURITY_HEADERS if k not in present)]
            await send(message)

        problem = self._problem(scope)
        if problem:
            await answer(secured, 400, "invalid", problem)
            return
        received = [0]
        try:
            await self.app(scope, self._timed(scope, receive, received), secured)
        finally:
            if received[0] >= memory.BIG_BODY_BYTES:
                await run_in_threadpool(memory.give_back)

    def _problem(self, scope: Scope) -> str | None:
        host = next((v for k, v in scope["headers"] if k == b"host"), b"").decode("latin-1")
        name = host_name(host)
        if not (name in self.hosts or is_loopback(name)):
            return (
                f"This node does not answer to the host '{host}'; "
                "set FHIR_NODE_BASE_URL or FHIR_NODE_ALLOWED_HOSTS to the names clients use"
            )
        try:
            unquote_to_bytes(scope["query_string"]).decode("utf-8")  # a `+` (a space) is UTF-8 either way
        except UnicodeDecodeError:
            return "The query string is not UTF-8 once percent-decoded"
        return None

    def _timed(self, scope: Scope, receive: Receive, received: list[int]) -> Receive:
        """`receive`, failing with BodyTimeout once the body is not complete by the deadline; after the
        body it passes through untouched (waiting for a disconnect has no deadline). Counts the body's
        bytes in `received` (after a big body, memory is given back). A request with neither
        Content-Length nor Transfer-Encoding has no body (RFC 9112 6.3): `receive` as it is (a search's
        wait for a disconnect then costs no deadline timer)."""
        if _BODY_HEADERS.isdisjoint([name for name, _ in scope["headers"]]):
            return receive
        deadline = asyncio.get_running_loop().time() + self.body_timeout
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(self.body_timeout) from None
            received[0] += len(message.get("body", b""))
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        return timed_receive

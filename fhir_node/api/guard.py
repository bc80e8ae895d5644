"""The one gate of the FHIR API: who asks (401 otherwise), the request's Access for the policy, and its
AuditEvent committed before the answer's first byte leaves (503 instead when it cannot be written).
Every FHIR URL passes here; only the discovery documents (metadata, SMART configuration) are public and
carry no data, so they are neither authenticated nor audited."""

from __future__ import annotations

import logging
from functools import cache, lru_cache
from urllib.parse import unquote, unquote_plus

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_node.api.failures import status_of
from fhir_node.api.middleware import answer, fhir_base, is_loopback
from fhir_node.audit import chain
from fhir_node.node import Node
from fhir_node.registry import KINDS
from fhir_node.search.registry import registry
from fhir_node.security.access import Access, Record, serving
from fhir_node.security.principal import LOCAL_OPERATOR, Principal, Scopes
from fhir_node.security.relationships import relationship_source
from fhir_node.security.tokens import AuthError, TokenVerifier

PUBLIC = ("/fhir/metadata", "/fhir/.well-known/smart-configuration")
_LOOPBACK_ONLY = "FHIR_NODE_AUTH=none serves loopback clients only"
#: Whoever a refused token claimed to be: no one (an empty `sub`), so the 401's AuditEvent names the client
#: by its address and user agent, not as the local operator. Nothing else runs for it.
UNAUTHENTICATED = Principal("", "patient", Scopes())
error_log = logging.getLogger("fhir_node.errors")


class Guard:
    """Authenticates (with FHIR_NODE_AUTH=none: loopback clients only), sets the Access, audits; a request
    that fails unexpectedly is audited too. Sits inside RequestContext (which owns the request id and
    answers such failures)."""

    def __init__(self, app: ASGIApp, node: Node) -> None:
        self.app = app
        self.node = node
        self.verifier = TokenVerifier(node.settings) if node.settings.auth == "jwt" else None
        self.relationships = relationship_source(node.settings)
        self.audit = node.audit_writer
        self.loopback_only = node.settings.auth == "none"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        fhir = scope["type"] == "http" and (path == "/fhir" or path.startswith("/fhir/")) and path not in PUBLIC
        if not fhir:
            if scope["type"] == "http" and self.loopback_only and not _from_loopback(scope):
                await answer(send, 403, "forbidden", _LOOPBACK_ONLY)
                return
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        access = Access(
            LOCAL_OPERATOR,
            request_id=scope.get("state", {}).get("request_id", ""),
            server=fhir_base(scope, self.node.settings.base_url),
            client=scope["client"][0] if scope.get("client") else None,
            user_agent=headers.get(b"user-agent", b"").decode("latin-1")[:200] or None,
            record=_record(scope) if self.node.settings.audit else None,
            relationships=self.relationships,
        )
        with serving(access), self.audit.request(access.record):
            problem = None
            if self.verifier is not None:
                try:
                    access.principal = await run_in_threadpool(self.verifier.verify, _bearer(headers))
                except AuthError as exc:
                    problem = exc
            if problem is not None:
                access.principal = UNAUTHENTICATED
                await self._unauthorised(problem, send)
                return
            if self.loopback_only and not _from_loopback(scope):
                await self._flush(403)
                await answer(send, 403, "forbidden", _LOOPBACK_ONLY)
                return
            try:
                reads_audit = _may_read_audit(scope)
                if reads_audit and _is_bundle(scope):
                    body, whole = await _read_up_to(receive, self.node.settings.max_body_bytes)
                    receive = _replaying(body, whole, receive)
                    reads_audit = not whole or _bundle_may_read_audit(body)
                if reads_audit:
                    await self._catch_up()
                await self.app(scope, receive, self._audited(send))
            except Exception as exc:
                await self._flush_failure(access, exc)
                raise  # RequestContext answers it (503 or 500) and logs it

    async def _catch_up(self) -> None:
        """Every AuditEvent indexed before a request that may read them (`chain.catch_up`, in a thread: it
        writes). Whether any waits is asked on the event loop: the hand-off to a thread for that alone cost
        such a request (a system search, an operation, a Bundle with reads) ~150 us of CPU, most of them
        finding none waiting (and with the audit off, always none but what an earlier run left)."""
        db = self.node.db
        if chain.behind(db) if db.is_sqlite else await db.awaiting(chain.behind, db):
            await run_in_threadpool(chain.catch_up, db)

    async def _flush_failure(self, access: Access, exc: Exception) -> None:
        """A request that failed before answering is audited too (best effort: the failure may be the
        database itself, and then there is nothing to write to)."""
        if access.record is None or access.record.written:
            return
        try:
            await self._flush(status_of(exc))
        except Exception as audit_exc:
            error_log.error("could not audit a failed request: %s", audit_exc)

    def _audited(self, send: Send) -> Send:
        """`send`, with the request's AuditEvent committed before the answer starts; if that fails the
        client gets a 503 (and none of the answer it was not audited for)."""
        refused = False

        async def audited_send(message: Message) -> None:
            nonlocal refused
            if message["type"] == "http.response.start":
                try:
                    await self._flush(message["status"])
                except Exception as exc:
                    error_log.error("audit unavailable; request refused: %s", exc)
                    refused = True
                    await answer(send, 503, "transient", "The audit log is unavailable; retry later")
                    return
            if not refused:
                await send(message)

        return audited_send

    async def _flush(self, status: int) -> None:
        await self.audit.flush(status)

    async def _unauthorised(self, problem: AuthError, send: Send) -> None:
        await self._flush(401)
        challenge = 'Bearer realm="fhir-node"'
        if problem.reason != "no bearer token":
            challenge += f', error="invalid_token", error_description="{problem.reason}"'
        await answer(send, 401, "login", f"Authentication failed: {problem.reason}", challenge=challenge)


def _from_loopback(scope: Scope) -> bool:
    client = scope.get("client")
    return is_loopback(client[0] if client else None)


def _may_read_audit(scope: Scope) -> bool:
    """`_reads_audit` of the request's path and query string."""
    return _reads_audit(scope["path"], scope.get("query_string", b""))


@lru_cache(maxsize=4096)
def _reads_audit(path: str, query_string: bytes) -> bool:
    """Whether the request may read AuditEvents, which must then all be indexed first (`chain.catch_up`):
    it names the type (in its path or, decoded, its query: `_type`, `_revinclude`, `_has`, a chain's type),
    uses a wildcard or a reference parameter of its type that may point to an AuditEvent (a chain or an
    include through `Consent.data`), reaches every type (system level; a Bundle, unless its bytes say
    otherwise: `_bundle_may_read_audit`), searches by POST (parameters in the body) or runs an operation.
    Anything else reads only the types it names. Decided once per URL repeated (an aggregator's searches)."""
    parts = path.removeprefix("/fhir").split("/")
    if len(parts) < 2 or not parts[1][:1].isupper() or "AuditEvent" in path or "$" in path:
        return True
    query = unquote_plus(query_string.decode("latin-1"))
    if path.endswith("/_search") or "AuditEvent" in query or "*" in query:
        return True
    return any(name in query for name in _to_audit_events(parts[1]))


def _is_bundle(scope: Scope) -> bool:
    return scope["method"] == "POST" and scope["path"].rstrip("/") == "/fhir"


#: Bytes in a Bundle without which none of its entries reads an AuditEvent: the type named (a URL, a
#: conditional reference, an include, a reference checked), a read or search entry, an operation or a
#: wildcard. Writes alone, as loads send, then do not wait for the chain's events to be indexed (~1.5 ms
#: each, up to the lag: seconds).
_READS_AUDIT = (b"AuditEvent", b'"GET"', b'"HEAD"', b"_search", b"$", b"*")


def _bundle_may_read_audit(body: bytes) -> bool:
    """Whether a Bundle may read AuditEvents (`_may_read_audit`): decided on its bytes (escapes included),
    erring towards yes, before anything parses it."""
    return b"\\u" in body or any(mark in body for mark in _READS_AUDIT)


async def _read_up_to(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The body's first bytes, no more than a chunk past `limit` (the route answers 413 past it, as it reads
    the rest: `negotiate.read_body`), and whether that is the whole body."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if not message.get("more_body", False) or size > limit:
            return b"".join(chunks), not message.get("more_body", False)


def _replaying(body: bytes, whole: bool, receive: Receive) -> Receive:
    """`receive` with the bytes already read handed over first, then the rest of the body, if any."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": not whole}

    return replay


@cache
def _to_audit_events(res_type: str) -> tuple[str, ...]:
    """The reference parameters of a type whose targets include AuditEvent."""
    params = registry().of(res_type).values() if res_type in KINDS else ()
    return tuple(p.code for p in params if p.type == "reference" and "AuditEvent" in p.targets)


def _bearer(headers: dict[bytes, bytes]) -> str:
    value = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("no bearer token")
    return token.strip()


def _record(scope: Scope) -> Record:
    """The request's audit record: what it does, from its method and URL (bundles refine transaction/batch)."""
    method: str = scope["method"]
    path: str = scope["path"]
    return Record(method, path, scope.get("query_string", b"").decode("latin-1"), *_interaction(method, path))


@lru_cache(maxsize=4096)
def _interaction(method: str, path: str) -> tuple[str, str | None, str | None]:
    """The interaction a FHIR URL performs, with the type and id it names: parsed once for a URL repeated
    (an aggregator's searches, all day)."""
    parts = [unquote(p) for p in path.removeprefix("/fhir").split("/") if p]
    res_type = parts[0] if parts and parts[0][0].isupper() else None
    res_id = parts[1] if len(parts) > 1 and parts[1][0] not in "_$" else None
    if not parts:
        interaction = "transaction" if method == "POST" else "search-system"
    elif parts == ["_history"]:
        interaction = "history-system"
    elif any(p.startswith("$") for p in parts):
        interaction = "operation"
    elif parts[-1] == "_history":
        interaction = "history-instance" if res_id else "history-type"
    elif len(parts) == 4 and parts[2] == "_history":
        interaction = "vread"
    elif res_id is None:
        by_method = {"POST": "create", "PUT": "update", "DELETE": "delete", "PATCH": "patch"}
        interaction = "search-type" if parts[-1] == "_search" else by_method.get(method, "search-type")
    else:
        interaction = {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, "read")
    return interaction, res_type, res_id

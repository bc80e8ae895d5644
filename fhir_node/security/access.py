"""The request being served: who asks, and what the audit must say about it.

Set once per HTTP request by the request path (`fhir_node.api.guard`), read by the policy and the audit
wherever an interaction touches data, including inside worker threads (contextvars follow
`run_in_threadpool`). Outside any request (the CLI, run by the operator) it is the local operator,
unaudited."""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from fhir_node.security.principal import LOCAL_OPERATOR, Principal
from fhir_node.security.relationships import CareTeamRelationships, RelationshipSource


@dataclass
class Record:
    """What one request did, filled in as it runs; becomes its AuditEvent."""

    method: str
    path: str
    query: str
    interaction: str
    res_type: str | None = None
    res_id: str | None = None
    #: Resources read or written, as (type, id), in the order touched.
    entities: list[tuple[str, str]] = field(default_factory=list)
    #: Ids of the Patients whose data the request touched (a search's: its page's, as `trail.patients_of`
    #: keeps them).
    patients: AbstractSet[str] = frozenset()
    #: The status a write answers (201 created, 204 deleted...), for an AuditEvent staged with the write.
    status: int = 200
    #: Set once an AuditEvent for this request committed (with a write), so none is written twice.
    written: bool = False
    #: Set while the audit writer's groups may wait for its AuditEvent (the request runs, not handed over).
    awaited: bool = False
    #: Set once an AuditEvent of its writes was staged for the audit writer to chain (`chain.record`).
    staged: bool = False


@dataclass
class Access:
    """One request's caller and audit record; `memo` keeps what the policy looked up once per request."""

    principal: Principal
    request_id: str = ""
    #: The FHIR base the request came to (the server agent's address).
    server: str = ""
    client: str | None = None
    user_agent: str | None = None
    record: Record | None = None
    relationships: RelationshipSource = field(default_factory=CareTeamRelationships)
    memo: dict[str, Any] = field(default_factory=dict)


_OPERATOR = Access(LOCAL_OPERATOR)
_current: ContextVar[Access | None] = ContextVar("fhir_node_access", default=None)


def current() -> Access:
    """The request being served, or the unaudited local operator outside any request."""
    return _current.get() or _OPERATOR


@contextmanager
def serving(access: Access) -> Iterator[Access]:
    """Make `access` the current request for the duration of the block."""
    token = _current.set(access)
    try:
        yield access
    finally:
        _current.reset(token)

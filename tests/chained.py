"""The node's AuditEvents straight from its chain (no request, so none is added), and facts to chain
directly: what the audit tests look at below the HTTP API."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import Connection, select

from fhir_node.audit import chain
from fhir_node.audit.events import Facts, facts
from fhir_node.security.access import Access, Record
from fhir_node.security.principal import LOCAL_OPERATOR
from fhir_node.store.schema import audit_chain


def chained_events(conn: Connection) -> list[dict[str, Any]]:
    """Every chained AuditEvent, in chain order, as the resource its chain entry stands for."""
    c = audit_chain.c
    rows = conn.execute(select(c.res_id, c.recorded, c.content).order_by(c.seq)).all()
    return [orjson.loads(chain.stored(res_id, recorded, content)) for res_id, recorded, content in rows]


def some_facts(statuses: list[int], request_id: str = "test") -> list[Facts]:
    """The facts of a read of a Patient by the local operator for each status, as a request would chain."""
    access = Access(LOCAL_OPERATOR, request_id=request_id, server="http://testserver/fhir")
    return [
        facts(access, Record("GET", "/fhir/Patient/p", "", "read", "Patient", "p"), s, access.server) for s in statuses
    ]


def eventually(check: Callable[[], bool], within: float = 10) -> None:
    """`check` comes true within `within` seconds: the audit writer's thread chains journals a few ms later."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "never came true"
        time.sleep(0.01)

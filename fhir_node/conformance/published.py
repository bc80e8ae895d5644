"""Our published guide (profiles/, terminology/) served as resources, read-only.

The files are the truth; the store holds a copy so that reads, history and search go through the ordinary
code, and every worker behind one database serves the same resources. `synchronise` runs after the schema
migration (`fhir-node migrate`, `fhir-node serve` before its workers start, `Node.from_settings`): a new or
changed file becomes a new version, a file gone from disk a deletion, an unchanged file writes nothing (a
restart adds no versions). One transaction under a lock: nodes starting together take turns, and the
second finds nothing left to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

from sqlalchemy import Connection, false, select

from fhir_node.conformance.package import shipped
from fhir_node.registry import CONFORMANCE_TYPES
from fhir_node.store import repository
from fhir_node.store.database import Database
from fhir_node.store.schema import resources


@dataclass
class Synchronised:
    """What one run changed, as `Type/id`: written (created or updated) and deleted."""

    written: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


@cache
def published() -> dict[tuple[str, str], dict[str, Any]]:
    """The guide's resources of the served conformance types, by (type, id); read once per process."""
    return {(r["resourceType"], r["id"]): r for r in shipped().values() if r["resourceType"] in CONFORMANCE_TYPES}


def synchronise(db: Database) -> Synchronised:
    """Make the stored conformance resources exactly the published files."""
    wanted = published()
    done = Synchronised()
    with db.write() as conn:
        db.lock(conn, "published-guide")
        for key, resource in wanted.items():
            previous = repository.current(conn, *key)
            if previous is None or previous.deleted or not repository.unchanged(previous, resource):
                repository.write(conn, *key, resource, previous, "PUT")
                done.written.append("/".join(key))
        for key in _stored(conn) - wanted.keys():
            repository.write(conn, *key, None, repository.current(conn, *key), "DELETE")
            done.deleted.append("/".join(key))
    return done


def _stored(conn: Connection) -> set[tuple[str, str]]:
    """(type, id) of every live stored resource of the conformance types."""
    t = resources.c
    rows = conn.execute(select(t.res_type, t.res_id).where(t.res_type.in_(CONFORMANCE_TYPES), t.deleted == false()))
    return {(row.res_type, row.res_id) for row in rows}


"""read and vread: the stored bytes of a version, or 404 / 410."""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import Connection

from fhir_node.audit import trail
from fhir_node.interactions.incoming import check_id, whole_number
from fhir_node.node import Node
from fhir_node.outcome import fail
from fhir_node.registry import kind, require
from fhir_node.security import policy
from fhir_node.store import repository
from fhir_node.store.repository import Version


def read(node: Node, res_type: str, res_id: str) -> Version:
    """The current version; 410 Gone (with the deleted version's ETag) once deleted."""
    require(kind(res_type), "read")
    check_id(res_id)
    with node.db.read() as conn:
        policy.require(res_type, "r")
        trail.note(conn, [(res_type, res_id)])
        found = repository.current(conn, res_type, res_id)
        if found is not None and found.deleted and not policy.unrestricted(res_type, "r"):
            raise policy.not_found(res_type, res_id)  # that it existed is not theirs to know either
        return _as_shown(conn, _present(found, res_type, res_id))


def vread(node: Node, res_type: str, res_id: str, version_id: str) -> Version:
    """A given version; a version that records a deletion answers 410."""
    require(kind(res_type), "vread")
    check_id(res_id)
    number = whole_number(version_id)
    if number is None:
        raise fail(404, "not-found", f"{res_type}/{res_id} has no version '{version_id}'")
    with node.db.read() as conn:
        policy.require(res_type, "r")
        trail.note(conn, [(res_type, res_id)])
        policy.readable(conn, res_type, res_id, full=True)
        found = repository.version(conn, res_type, res_id, number)
    if found is None:
        raise fail(404, "not-found", f"{res_type}/{res_id} has no version {version_id}")
    return _present(found, res_type, res_id)


def _as_shown(conn: Connection, found: Version) -> Version:
    """The version as this caller may see it: 404 when it may not, redacted where the policy says."""
    policy.readable(conn, found.res_type, found.res_id)
    content, _ = policy.shown(conn, found.res_type, found.content or b"")
    return found if content is found.content else replace(found, content=content)


def _present(found: Version | None, res_type: str, res_id: str) -> Version:
    if found is None:
        raise fail(404, "not-found", f"{res_type}/{res_id} is not known")
    if found.deleted:
        err = fail(410, "deleted", f"{res_type}/{res_id} was deleted (version {found.version_id})")
        err.headers["ETag"] = found.etag
        raise err
    return found

"""create, update and delete (plain and conditional): one database transaction each, every version kept,
optimistic locking by ETag. The `*_in` functions work inside a caller's transaction (bundles reuse them)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError, OperationalError

from fhir_node.audit import trail
from fhir_node.interactions.incoming import check_id, check_resource
from fhir_node.interactions.search import matching
from fhir_node.node import Node
from fhir_node.outcome import FHIRError, error, fail
from fhir_node.registry import kind, require
from fhir_node.rules import billing, death, principal
from fhir_node.rules.patients import foresee as foresee_patients
from fhir_node.rules.patients import patient_in
from fhir_node.search.limits import Limits
from fhir_node.security import policy
from fhir_node.store import repository
from fhir_node.store.batch import after_inserts, deferring
from fhir_node.store.repository import ConcurrentWrite, Version

_DEADLOCK = "40P01"  # PostgreSQL's deadlock_detected
_ETAG = re.compile(r'\s*(?:W/)?"?(\d+)"?\s*')


@dataclass(frozen=True)
class Written:
    """The outcome of a write: the version now current, the HTTP status it earned, and the versions the
    domain rules wrote because of it (inclusions a death closed)."""

    version: Version
    status: int
    entailed: tuple[Version, ...] = ()


def parse_if_match(header: str | None) -> int | None:
    """The version number in an If-Match header (`W/"3"`, `"3"`), or None when absent."""
    if header is None:
        return None
    m = _ETAG.fullmatch(header)
    if not m:
        raise fail(400, "invalid", f"If-Match must be an ETag such as W/\"3\", got '{header}'")
    return int(m.group(1))


def create(node: Node, res_type: str, body: Any, if_none_exist: str | None = None) -> Written:
    """POST: a new resource with a server id; with If-None-Exist, 200 and the match if exactly one exists."""
    require(kind(res_type), "create", "type")
    resource = check_resource(body, res_type, enforce_profiles=node.settings.enforce_profiles)
    with transaction(node) as conn:
        if if_none_exist is not None:
            node.db.lock(conn, f"write:{res_type}")
            ids = unique_match(conn, res_type, if_none_exist, node.limits)
            if ids:
                found = repository.current(conn, res_type, ids[0])
                if found is not None:
                    return Written(existing(conn, found), 200)
        return create_in(conn, res_type, resource)


def existing(conn: Connection, found: Version) -> Version:
    """The resource a conditional create matched, if the caller may see it. Matching ignores the access
    policy (a caller must not create a duplicate of what it cannot see), so a match it may not read is a
    403; except a Patient for whoever may declare one: it holds only the SSIN the caller just sent."""
    policy.require(found.res_type, "c")
    trail.note(conn, [(found.res_type, found.res_id)])
    declaring = found.res_type == "Patient" and policy.reach("Patient", "c") == "declare"
    if not declaring and not policy.visible(conn, found.res_type, found.res_id, full=True):
        raise policy.forbidden()
    return found


def create_in(conn: Connection, res_type: str, resource: dict[str, Any], res_id: str | None = None) -> Written:
    """A new resource; `res_id` is one the caller assigned already (a transaction resolving urn:uuid)."""
    policy.require(res_type, "c")
    res_id = res_id or repository.new_id()
    resource = _ruled(conn, res_type, res_id, resource)
    written = repository.write(conn, res_type, res_id, resource, None, "POST")
    _written(conn, written, "c")
    return Written(written, 201, _consequences(conn, written, resource))


def _ruled(conn: Connection, res_type: str, res_id: str, resource: dict[str, Any]) -> dict[str, Any]:
    """What a write stores after the domain rules (fhir_node.rules): an inclusion of a deceased patient
    closed, its billing dates computed, and refused (409) if it overlaps another principal inclusion."""
    if res_type != "EpisodeOfCare":
        return resource
    patient = patient_in(conn, resource.get("patient") or {})
    resource = billing.stamped(death.closed_for(conn, patient, resource))
    principal.check(conn, res_id, resource, patient)
    return resource


def foresee(conn: Connection, resources: list[tuple[str, dict[str, Any]]]) -> None:
    """Before a Bundle's batched writes of these resources, none changing a stored Patient: what the domain
    rules would ask the database about each EpisodeOfCare, asked at once (its patient, its patient's other
    principal inclusions)."""
    inclusions = [r for res_type, r in resources if res_type == "EpisodeOfCare"]
    if inclusions:
        patients = foresee_patients(conn, [r.get("patient") or {} for r in inclusions])
        principal.foresee(conn, list(zip(inclusions, patients, strict=True)))


def _consequences(conn: Connection, written: Version, resource: dict[str, Any]) -> tuple[Version, ...]:
    """What a write entails, in its transaction: a Patient's death closes its open inclusions. In a Bundle
    whose inserts are still pending, once they are written: its inclusions of the patient, created before
    or after the Patient in the Bundle, are only found then."""
    if written.res_type != "Patient" or death.death_day(resource) is None:
        return ()
    if not deferring(conn):
        return _close_inclusions(conn, written.res_id, resource)
    after_inserts(conn, _close_deceased, [(written.res_id, resource)])
    return ()


def _close_deceased(conn: Connection, deceased: list[tuple[str, dict[str, Any]]]) -> None:
    for patient_id, resource in deceased:
        _close_inclusions(conn, patient_id, resource)


def _close_inclusions(conn: Connection, patient_id: str, resource: dict[str, Any]) -> tuple[Version, ...]:
    closures = death.closures(conn, patient_id, resource)
    return tuple(update_in(conn, "EpisodeOfCare", res_id, closed, None).version for res_id, closed in closures)


def _written(conn: Connection, written: Version, letter: str) -> None:
    """After a write: the caller still reaches what it wrote (else 403, rolled back); audit notes it."""
    policy.check_written(conn, written.res_type, written.res_id, letter)
    trail.note(conn, [(written.res_type, written.res_id)], written.status)


def update(node: Node, res_type: str, res_id: str, body: Any, if_match: str | None = None) -> Written:
    """PUT: the next version; a new id (or a deleted one) is created with the client's id (201)."""
    require(kind(res_type), "update")
    check_id(res_id)
    expected = parse_if_match(if_match)
    resource = check_resource(body, res_type, url_id=res_id, enforce_profiles=node.settings.enforce_profiles)
    with transaction(node) as conn:
        return update_in(conn, res_type, res_id, resource, expected)


def update_in(conn: Connection, res_type: str, res_id: str, resource: dict[str, Any], expected: int | None) -> Written:
    previous = repository.current(conn, res_type, res_id, for_update=True)
    live = previous is not None and not previous.deleted
    if live and previous is not None:
        policy.check_write(conn, res_type, res_id, previous.content or b"", resource)
    else:
        policy.require(res_type, "c")
    _check_version(previous, expected, res_type, res_id)
    resource = _ruled(conn, res_type, res_id, resource)
    if live and previous is not None and repository.unchanged(previous, resource):
        trail.note(conn, [(res_type, res_id)], 200)  # as mainstream servers do: no new version for no change
        return Written(previous, 200)
    written = repository.write(conn, res_type, res_id, resource, previous, "PUT")
    _written(conn, written, "u" if live else "c")
    return Written(written, written.status, _consequences(conn, written, resource))


def conditional_update(node: Node, res_type: str, query: str, body: Any, if_match: str | None = None) -> Written:
    """PUT [type]?criteria: update the one match; none: create (with the body's id, if any); several: 412."""
    require(kind(res_type), "update", "type")
    expected = parse_if_match(if_match)
    enforce = node.settings.enforce_profiles
    if not isinstance(body, dict):
        check_resource(body, res_type, enforce_profiles=enforce)  # raises the same 400 a plain update would
    given = body.get("id")
    with transaction(node) as conn:
        node.db.lock(conn, f"write:{res_type}")
        ids = unique_match(conn, res_type, query, node.limits)
        if ids and given not in (None, ids[0]):
            raise fail(400, "invalid", f"Body id '{given}' is not the matching {res_type}/{ids[0]}", f"{res_type}.id")
        target = ids[0] if ids else given
        if target is None:
            return create_in(conn, res_type, check_resource(body, res_type, enforce_profiles=enforce))
        target_id = check_id(str(target))
        resource = check_resource({**body, "id": target}, res_type, url_id=target_id, enforce_profiles=enforce)
        return update_in(conn, res_type, str(target), resource, expected)


def delete(node: Node, res_type: str, res_id: str, if_match: str | None = None) -> Version | None:
    """DELETE: a deletion version; deleting what is already deleted changes nothing (None)."""
    require(kind(res_type), "delete")
    check_id(res_id)
    expected = parse_if_match(if_match)
    with transaction(node) as conn:
        return delete_in(conn, res_type, res_id, expected)


def delete_in(conn: Connection, res_type: str, res_id: str, expected: int | None) -> Version | None:
    previous = repository.current(conn, res_type, res_id, for_update=True)
    if previous is None:
        raise fail(404, "not-found", f"{res_type}/{res_id} is not known")
    if previous.deleted:
        if not policy.unrestricted(res_type, "d"):
            raise policy.not_found(res_type, res_id)
        _check_version(previous, expected, res_type, res_id)
        return None
    policy.check_write(conn, res_type, res_id, previous.content or b"", None)
    _check_version(previous, expected, res_type, res_id)
    trail.note(conn, [(res_type, res_id)], 204)
    return repository.write(conn, res_type, res_id, None, previous, "DELETE")


def conditional_delete(node: Node, res_type: str, query: str, if_match: str | None = None) -> Version | None:
    """DELETE [type]?criteria: refused without criteria; deletes the one match (none: nothing); 412 if several."""
    require(kind(res_type), "delete", "type")
    expected = parse_if_match(if_match)
    with transaction(node) as conn:
        node.db.lock(conn, f"write:{res_type}")
        ids = unique_match(conn, res_type, query, node.limits)
        return delete_in(conn, res_type, ids[0], expected) if ids else None


def unique_match(conn: Connection, res_type: str, query: str, limits: Limits) -> list[str]:
    """The id matching a conditional operation's criteria (none or one); several is a 412."""
    ids = matching(conn, res_type, query, limits)
    if len(ids) > 1:
        raise fail(412, "multiple-matches", f"The criteria '{query}' match more than one {res_type}")
    return ids


def _check_version(previous: Version | None, expected: int | None, res_type: str, res_id: str) -> None:
    if expected is None:
        return
    have = previous.version_id if previous else None
    if have != expected:
        now = f"version {have}" if have else "no version"
        raise fail(412, "conflict", f"If-Match expects version {expected} of {res_type}/{res_id}, which has {now}")


@contextlib.contextmanager
def transaction(node: Node) -> Iterator[Connection]:
    """A write transaction; a write that lost a race with another answers 409, nothing is written."""
    try:
        with node.db.write() as conn:
            yield conn
            trail.stage(conn)  # the request's AuditEvent commits with its writes, or not at all
    except (ConcurrentWrite, IntegrityError):
        raise FHIRError(409, [error("conflict", "A concurrent write changed this resource; retry")]) from None
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != _DEADLOCK:
            raise
        # Writers taking several per-patient locks (rules.principal) in other orders: PostgreSQL chose this one.
        raise FHIRError(409, [error("conflict", "A concurrent write held what this one needed; retry")]) from None
    trail.committed()

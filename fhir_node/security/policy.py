"""The access policy: the rules of `fhir_node.security.rules` applied to the current request, as SQL
conditions (searches, includes, history and counts are filtered in the database, never fetched then
dropped), visibility checks (reads answer 404 for what the caller may not see, as for a missing id),
write checks (before and after the write, in its transaction), and the PSI redaction."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from functools import cache
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Connection, FromClause, Select, Table, and_, false, or_, select

from fhir_node.outcome import FHIRError, fail
from fhir_node.rules.billing import BILLING_PERIOD
from fhir_node.rules.inclusion import INCLUSION_STATUS
from fhir_node.rules.pseudonym import protect
from fhir_node.rules.research_consent import in_consent
from fhir_node.search.index import param_is
from fhir_node.security.access import current
from fhir_node.security.keyring import installed
from fhir_node.security.relationships import NIHDI_SYSTEMS, SSIN
from fhir_node.security.rules import (
    GRANTS,
    MUTABLE,
    OPERATIONS,
    PATIENT_PARAM,
    REDACTED_KEEPS,
    SUPPRESSED_COUNTS,
    Reach,
)
from fhir_node.store.repository import now
from fhir_node.store.schema import idx_reference, idx_token, resources

#: The security label on a redacted resource (v3 ObservationValue REDACTED).
REDACTED_LABEL = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "REDACTED",
    "display": "redacted",
}
_PSI_ROLES = ("psi-admin", "psi-coordinator")


def forbidden() -> FHIRError:
    """A denial that reveals nothing about what exists."""
    return fail(403, "forbidden", "You are not allowed to do this")


def not_found(res_type: str, res_id: str) -> FHIRError:
    """Exactly the answer a missing id gets (`read`), for an id the caller may not see."""
    return fail(404, "not-found", f"{res_type}/{res_id} is not known")


def reach(res_type: str, letter: str) -> Reach | None:
    """How far the caller reaches on `res_type` for SMART letter `letter`: both the token's scope and the
    role's grant must allow it (None: not at all)."""
    principal = current().principal
    if not principal.scopes.allows(res_type, letter):
        return None
    return GRANTS[principal.role].get(res_type, {}).get(letter)


def unrestricted(res_type: str, letter: str) -> bool:
    """Whether the caller reaches every resource of the type (the operator; the aggregator's reads)."""
    return reach(res_type, letter) == "all"


def require(res_type: str, letter: str) -> Reach:
    """The reach, or a 403."""
    found = reach(res_type, letter)
    if found is None:
        raise forbidden()
    return found


def require_operation(name: str) -> None:
    """403 unless the caller's role may call the node's operation `name` (rules.OPERATIONS)."""
    if current().principal.role not in OPERATIONS.get(name, frozenset()):
        raise forbidden()


def condition(conn: Connection, res_type: str, letter: str, *, full: bool = False) -> ColumnElement[bool] | None:
    """SQL on `resources` rows of `res_type` that the caller reaches (None: all of them); 403 when the
    caller may not do `letter` on the type at all. `full` leaves out what the caller would only see
    redacted (writes, history, criteria on redacted elements)."""
    found = require(res_type, letter)
    if found in ("all", "declare"):
        return None
    if found == "own":
        return _about(res_type, _own_patients())
    if found == "relationship":
        return _about(res_type, _related_patients(conn))
    if found == "consented":
        return _of_consented(res_type)
    project = _in_project(res_type, conn)
    if full or res_type != "EpisodeOfCare":
        return project
    return or_(project, and_(_about(res_type, _project_patients(conn)), _principal_inclusion()))


#: Reaches whose `condition` is the same for every caller that has them: none, or the research-consent
#: probe (one expression per type). A statement holding it may serve each of those callers (`search.plans`).
_SHARED = frozenset({"all", "declare", "consented"})


def shared(res_type: str, letter: str) -> Reach | None:
    """The caller's reach on the type when its condition is one every caller with that reach shares, else
    None (the condition depends on the caller: its own patients, relationships, project)."""
    found = reach(res_type, letter)
    return found if found in _SHARED else None


def prepare(conn: Connection, res_types: Collection[str]) -> None:
    """Look up, once per request, the search conditions of types that chains and `_has` reach into
    (`prepared` hands them to the SQL builder, which has no connection)."""
    memo = current().memo
    for res_type in res_types:
        key = f"chain:{res_type}"
        if key not in memo:
            memo[key] = condition(conn, res_type, "s", full=True) if reach(res_type, "s") else false()


def prepared(res_type: str) -> ColumnElement[bool] | None:
    """The condition `prepare` looked up for `res_type` (None: unrestricted, or never prepared: the
    operator outside a request)."""
    return current().memo.get(f"chain:{res_type}")


def visible(conn: Connection, res_type: str, res_id: str, letter: str = "r", *, full: bool = False) -> bool:
    """Whether the caller reaches this live resource (redacted counts unless `full`)."""
    if reach(res_type, letter) is None:
        return False
    cond = condition(conn, res_type, letter, full=full)
    if cond is None:
        return True
    r = resources
    q = select(r.c.res_id).where(r.c.res_type == res_type, r.c.res_id == res_id, r.c.deleted == false(), cond)
    return conn.execute(q).first() is not None


def readable(conn: Connection, res_type: str, res_id: str, *, full: bool = False) -> None:
    """404, as for a missing id, unless the caller may read this resource."""
    if not visible(conn, res_type, res_id, "r", full=full):
        raise not_found(res_type, res_id)


def _may_redact(res_type: str) -> bool:
    """Whether `shown` may redact a resource of this type for the caller (else it gives the bytes as stored)."""
    return res_type == "EpisodeOfCare" and current().principal.role in _PSI_ROLES


def shown_page(conn: Connection, res_types: Collection[str], rows: Iterable[Any]) -> list[tuple[bytes, bool]] | None:
    """`shown` for each of a page's `rows` ((type, id, content, ...) tuples) of `res_types`, asking once
    whether the caller may be shown a redaction of any of them: None when not (every row as stored)."""
    if not any(_may_redact(t) for t in res_types):
        return None
    return [shown(conn, r[0], r[2]) for r in rows]


def shown(conn: Connection, res_type: str, content: bytes) -> tuple[bytes, bool]:
    """The bytes the caller gets for a resource it may see, and whether they are redacted: a PSI sees
    another project's principal inclusion of its patients with only REDACTED_KEEPS, labelled."""
    if not _may_redact(res_type):
        return content, False
    resource = orjson.loads(content)
    ref = (resource.get("managingOrganization") or {}).get("reference", "")
    if ref.startswith("Organization/") and ref.removeprefix("Organization/") in _project_organizations(conn):
        return content, False
    kept = {k: v for k, v in resource.items() if k in REDACTED_KEEPS}
    meta = resource.get("meta", {})
    kept["meta"] = {
        "versionId": meta.get("versionId"),
        "lastUpdated": meta.get("lastUpdated"),
        "security": [REDACTED_LABEL],
    }
    return orjson.dumps(kept), True


def check_write(
    conn: Connection, res_type: str, res_id: str, previous_content: bytes, resource: dict[str, Any] | None
) -> None:
    """Before changing an existing resource: it must be visible (else 404) and within the caller's reach
    for the change (else 403), and an update may only change what the role may change. `resource` None: a
    delete. (A create needs only `require(res_type, "c")` before and `check_written` after.)"""
    readable(conn, res_type, res_id)
    letter = "d" if resource is None else "u"
    if not visible(conn, res_type, res_id, letter, full=True):
        raise forbidden()
    if resource is not None:
        _check_mutable(res_type, orjson.loads(previous_content), resource)


def check_written(conn: Connection, res_type: str, res_id: str, letter: str) -> None:
    """After a create or update, in its transaction: the caller must still reach what it wrote (a
    patient's consent names them, a PSI's inclusion is its own project's, ...); else 403, rolled back."""
    found = require(res_type, letter)
    if found not in ("all", "declare") and not visible(conn, res_type, res_id, letter, full=True):
        raise forbidden()


def page_cap(requested: int, default_max: int, coordinator_max: int) -> int:
    """The page size: PSI coordinators may not ask for more than their cap (no mass extraction)."""
    if current().principal.role == "psi-coordinator" and requested > coordinator_max:
        raise fail(403, "forbidden", f"A psi-coordinator's pages hold at most {coordinator_max} resources", "_count")
    return min(requested, default_max)


def of_patients(res_type: str, patient_ids: Collection[str]) -> ColumnElement[bool]:
    """SQL on `resources` rows of `res_type` that are, or belong to, one of these Patients (a Group's
    members, for a Group export: within what the caller may see anyway)."""
    return _about(res_type, patient_ids)


def count_minimum(configured: int) -> int | None:
    """The small-cell threshold for the caller's counts (None: its counts are not suppressed)."""
    return configured if current().principal.role in SUPPRESSED_COUNTS else None


def _check_mutable(res_type: str, before: dict[str, Any], after: dict[str, Any]) -> None:
    role = current().principal.role
    paths = MUTABLE.get(role, {}).get(res_type)
    if role == "operator" or (res_type in MUTABLE.get(role, {}) and paths is None):
        return
    if paths is None or _without(before, paths) != _without(protect(after), paths):  # `before` is as stored
        raise fail(403, "forbidden", f"Your role may only change {', '.join(paths or ()) or 'nothing'} here")


def _without(resource: dict[str, Any], paths: tuple[str, ...]) -> dict[str, Any]:
    """The resource minus server-owned parts and the changeable `paths` (`element` or `element.child`)."""
    out = {k: v for k, v in resource.items() if k not in ("id", "meta", "text")}
    if "extension" in out:  # the billing dates are the node's to compute, whoever changed the period
        out["extension"] = [e for e in out["extension"] if e.get("url") != BILLING_PERIOD]
    for path in paths:
        head, _, child = path.partition(".")
        if not child:
            out.pop(head, None)
        elif isinstance(out.get(head), dict):
            out[head] = {k: v for k, v in out[head].items() if k != child}
    return out


def _about(res_type: str, patients: Select[Any] | Collection[str]) -> ColumnElement[bool]:
    """Rows of `res_type` that are, or belong to, one of `patients` (Patient ids)."""
    r = resources
    if res_type == "Patient":
        return r.c.res_id.in_(patients)
    param = PATIENT_PARAM.get(res_type)
    if param is None:
        return false()
    return _indexed(
        idx_reference, res_type, param, lambda ref: (ref.c.target_type == "Patient", ref.c.target_id.in_(patients))
    )


@cache
def _of_consented(res_type: str) -> ColumnElement[bool]:
    """Rows of `res_type` that are, or belong to, a patient consented for research, probed per row (no set
    of patients is built: a page stops as soon as it is full). Built once per type: it depends on nothing
    but the type, and the same expression object lets SQLAlchemy reuse its compiled form."""
    if res_type == "Patient":
        return in_consent(resources.c.res_id)
    param = PATIENT_PARAM.get(res_type)
    if param is None:
        return false()
    return _indexed(
        idx_reference, res_type, param, lambda ref: (ref.c.target_type == "Patient", in_consent(ref.c.target_id))
    )


def _indexed(
    table: Table, res_type: str, param: str, conditions: Callable[[FromClause], tuple[ColumnElement[bool], ...]]
) -> ColumnElement[bool]:
    """The enclosing `resources` row (of `res_type`) has an index row of `param` in `table` that meets
    `conditions` (an alias of the table: never correlated with one the enclosing query walks)."""
    alias = table.alias()
    r = resources
    own = (alias.c.res_type == r.c.res_type, alias.c.res_id == r.c.res_id, param_is(alias, res_type, param))
    return select(alias.c.res_id).where(*own, *conditions(alias)).exists()


def _own_patients() -> Select[Any]:
    """The Patients carrying the caller's SSIN (as it rests: pseudonymised)."""
    t = idx_token.alias()
    stored = installed().forms(current().principal.sub)
    return select(t.c.res_id).where(
        t.c.res_type == "Patient", t.c.param == "identifier", t.c.system == SSIN, t.c.code.in_(stored)
    )


def _related_patients(conn: Connection) -> frozenset[str]:
    """Patients with a current therapeutic relationship, looked up once per request."""
    access = current()
    if "related" not in access.memo:
        access.memo["related"] = access.relationships.patients(conn, access.principal, now())
    return access.memo["related"]


def _project_organizations(conn: Connection) -> frozenset[str]:
    """Ids of the Organizations carrying the caller's project NIHDI number, looked up once per request."""
    access = current()
    if "project" not in access.memo:
        t = idx_token
        q = select(t.c.res_id).where(
            t.c.res_type == "Organization",
            t.c.param == "identifier",
            t.c.system.in_(NIHDI_SYSTEMS),
            t.c.code == (access.principal.psi or ""),
        )
        access.memo["project"] = frozenset(conn.execute(q).scalars())
    return access.memo["project"]


def _in_project(res_type: str, conn: Connection) -> ColumnElement[bool]:
    """The project's own inclusions, or resources of patients included in the project."""
    if res_type != "EpisodeOfCare":
        return _about(res_type, _project_patients(conn))
    orgs = _project_organizations(conn)
    return _indexed(
        idx_reference,
        res_type,
        "organization",
        lambda ref: (ref.c.target_type == "Organization", ref.c.target_id.in_(orgs)),
    )


def _project_patients(conn: Connection) -> Select[Any]:
    """Patients with an inclusion (current or past) in the caller's project."""
    pat, org = idx_reference.alias(), idx_reference.alias()
    inclusions = select(org.c.res_id).where(
        org.c.res_type == "EpisodeOfCare",
        org.c.param == "organization",
        org.c.target_type == "Organization",
        org.c.target_id.in_(_project_organizations(conn)),
    )
    return select(pat.c.target_id).where(
        pat.c.res_type == "EpisodeOfCare",
        pat.c.param == "patient",
        pat.c.target_type == "Patient",
        pat.c.res_id.in_(inclusions),
    )


def _principal_inclusion() -> ColumnElement[bool]:
    """EpisodeOfCare rows typed as a principal inclusion."""
    return _indexed(
        idx_token, "EpisodeOfCare", "type", lambda t: (t.c.system == INCLUSION_STATUS, t.c.code == "principal")
    )

"""FHIR Bulk Data export (Bulk Data Access IG 2.0.0): `$export` at system, Patient and Group level.

A kick-off stores a job (who asked, what, as of when) and answers with its status URL; the export itself
runs in the background (`fhir_node.operations.export_runner`), on whichever worker claims it, and writes
NDJSON segments to the database. Status polls, cancellation (DELETE) and file downloads read the job
back, so any worker answers them and a restart loses nothing. Only the principal who kicked a job off
polls it, downloads its files or cancels it; to anyone else it does not exist (404).

What the files hold is what the owner may search, decided by the access policy at export time, as
searches decide it (the aggregator: consented patients only), shaped by the same `policy.shown`
(redaction, pseudonymisation) as search results."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, delete, false, func, select, update

from fhir_node.datetimes import parse_instant
from fhir_node.interactions.incoming import single_values
from fhir_node.node import Node
from fhir_node.outcome import fail
from fhir_node.registry import CONFORMANCE_TYPES, KINDS
from fhir_node.rules.pseudonym import shown_lines
from fhir_node.security import policy
from fhir_node.security.access import current
from fhir_node.security.principal import Principal, Scopes
from fhir_node.security.rules import PATIENT_PARAM
from fhir_node.store import repository
from fhir_node.store.repository import instant, now
from fhir_node.store.schema import export_files, export_jobs, resources

#: The Bulk Data IG's server CapabilityStatement, which ours instantiates.
BULK_DATA_SERVER = "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
#: The operations' definitions, by the level they are called at.
DEFINITIONS = {
    "system": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
    "Patient": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
    "Group": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
}
NDJSON = "application/fhir+ndjson"
_FORMATS = (NDJSON, "application/ndjson", "ndjson")
_PARAMETERS = ("_type", "_since", "_outputFormat")
#: Types whose data a Patient or Group export covers: the patient compartment as the node serves it.
COMPARTMENT = ("Patient", *PATIENT_PARAM)
#: Job states; a cancelled job is gone (its row and files are deleted at once).
ACCEPTED, RUNNING, COMPLETED, FAILED = "accepted", "in-progress", "completed", "failed"


def kick_off(node: Node, request: str, params: list[tuple[str, str]], level: str, group_id: str | None = None) -> str:
    """A new job for the caller (403 unless its role may export); returns the job id. `request` is the
    kick-off URL (for the manifest); `level` is `system`, `Patient` or `Group`."""
    policy.require_operation("export")
    values = single_values(params, _PARAMETERS, "$export")
    fmt = values.get("_outputFormat", NDJSON)
    if fmt not in _FORMATS:
        raise fail(400, "not-supported", f"_outputFormat '{fmt}' is not supported; use {NDJSON}", "_outputFormat")
    since = parse_instant(values["_since"], "_since") if "_since" in values else None
    types = _types(values.get("_type"), level)
    with node.db.write() as conn:
        members = _members(conn, group_id) if level == "Group" and group_id is not None else None
        job_id = str(uuid.uuid4())
        conn.execute(
            export_jobs.insert().values(
                id=job_id,
                owner=_owner(current().principal),
                request=request,
                types=",".join(types),
                since=since,
                members=orjson.dumps(members) if members is not None else None,
                transaction_time=now(),
                status=ACCEPTED,
                type_index=0,
                cursor=None,
                exported=0,
            )
        )
    return job_id


@dataclass
class Status:
    """Where a job stands: `progress` (0-100) while running; the manifest once complete; `error` if failed."""

    state: str
    progress: int = 0
    manifest: dict[str, Any] | None = None
    error: str | None = None
    expires: datetime | None = None


def status(node: Node, job_id: str, base: str) -> Status:
    """The job's status for its owner (404 for anyone else, or once cancelled or expired)."""
    with node.db.read() as conn:
        job = _owned(conn, job_id, node)
        if job.status == FAILED:
            return Status(FAILED, error=job.error)
        if job.status != COMPLETED:
            return Status(job.status, _progress(conn, job))
        manifest = {
            "transactionTime": instant(job.transaction_time),
            "request": job.request,
            "requiresAccessToken": True,
            "output": [
                {"type": t, "url": f"{base}/$export-file/{job_id}/{file_name(t, part)}", "count": count}
                for t, part, count in _files(conn, job_id)
            ],
            "error": [],
        }
        return Status(COMPLETED, 100, manifest, expires=_expiry(job, node))


def cancel(node: Node, job_id: str) -> None:
    """DELETE on the status URL: the job stops (a worker running it sees it gone at its next step) and
    its files are deleted."""
    with node.db.write() as conn:
        _owned(conn, job_id, node)
        forget(conn, job_id)


def file_segments(node: Node, job_id: str, name: str) -> Iterator[bytes]:
    """The NDJSON of one output file, segment by segment (each read in its own short transaction, so a
    large file never holds a snapshot open); 404 unless the caller owns the completed job and the file."""
    res_type, part = _parse_file_name(name)
    with node.db.read() as conn:
        job = _owned(conn, job_id, node)
        f = export_files
        seqs = list(
            conn.execute(
                select(f.c.seq)
                .where(f.c.job_id == job_id, f.c.res_type == res_type, f.c.part == part)
                .order_by(f.c.seq)
            ).scalars()
        )
    if job.status != COMPLETED or not seqs:
        raise fail(404, "not-found", f"Export file {name} is not known")
    return _segments(node, seqs)


def _segments(node: Node, seqs: list[int]) -> Iterator[bytes]:
    """Files rest with the node's pseudonyms; the owner gets the SSINs it may see (the aggregator its own)."""
    for seq in seqs:
        with node.db.read() as conn:
            segment = conn.execute(select(export_files.c.content).where(export_files.c.seq == seq)).scalar_one()
        yield shown_lines(segment)


def file_name(res_type: str, part: int) -> str:
    return f"{res_type}-{part}.ndjson"


def forget(conn: Connection, job_id: str) -> None:
    """Remove a job and its files."""
    conn.execute(delete(export_files).where(export_files.c.job_id == job_id))
    conn.execute(delete(export_jobs).where(export_jobs.c.id == job_id))


def owner_principal(raw: bytes) -> Principal:
    """The principal a job runs as, from what `_owner` stored."""
    data = orjson.loads(raw)
    scopes = Scopes({t: frozenset(letters) for t, letters in data["scopes"].items()})
    return Principal(data["sub"], data["role"], scopes, data.get("nihdi"), data.get("psi"), data.get("client_id"))


def _owner(p: Principal) -> bytes:
    scopes = {t: "".join(sorted(letters)) for t, letters in p.scopes.grants.items()}
    return orjson.dumps(
        {"sub": p.sub, "role": p.role, "scopes": scopes, "nihdi": p.nihdi, "psi": p.psi, "client_id": p.client_id}
    )


def _owned(conn: Connection, job_id: str, node: Node) -> Any:
    """The job, if the caller asked for it and it has not expired; else 404 (as for an unknown job)."""
    job = conn.execute(select(export_jobs).where(export_jobs.c.id == job_id)).first()
    mine = job is not None and _same(owner_principal(job.owner), current().principal)
    expires = _expiry(job, node) if mine else None
    if not mine or (expires is not None and expires <= now()):
        raise fail(404, "not-found", f"Export job {job_id} is not known")
    return job


def _same(a: Principal, b: Principal) -> bool:
    return (a.sub, a.role, a.nihdi, a.psi) == (b.sub, b.role, b.nihdi, b.psi)


def _expiry(job: Any, node: Node) -> datetime | None:
    if job.finished is None:
        return None
    return job.finished + timedelta(hours=node.settings.export_retention_hours)


def _types(raw: str | None, level: str) -> list[str]:
    """The types to export: those named in `_type` (each one served, exportable at this level and
    searchable by the caller, else 400 / 403), or every such type the caller may search."""
    exportable = [t for t in KINDS if t not in CONFORMANCE_TYPES and (level == "system" or t in COMPARTMENT)]
    if raw is None:
        found = [t for t in exportable if policy.reach(t, "s")]
        if not found:
            raise policy.forbidden()
        return found
    named = list(dict.fromkeys(t.strip() for t in raw.split(",") if t.strip()))
    for t in named:
        if t not in exportable:
            where = "" if level == "system" else f" at {level} level (the patient compartment)"
            raise fail(400, "not-supported", f"_type: '{t}' cannot be exported{where}", "_type")
        policy.require(t, "s")
    if not named:
        raise fail(400, "invalid", "_type names no resource type", "_type")
    return named


def _members(conn: Connection, group_id: str) -> list[str]:
    """The ids of the Patients a live Group lists as current members (404 for an unknown Group)."""
    found = repository.current(conn, "Group", group_id)
    if found is None or found.deleted or found.content is None:
        raise fail(404, "not-found", f"Group/{group_id} is not known")
    group = orjson.loads(found.content)
    ids = []
    for member in group.get("member", []):
        ref = member.get("entity", {}).get("reference", "")
        if ref.startswith("Patient/") and not member.get("inactive", False):
            ids.append(ref.removeprefix("Patient/"))
    return sorted(set(ids))


def _files(conn: Connection, job_id: str) -> list[tuple[str, int, int]]:
    """(type, part, resources) of each output file, in export order."""
    f = export_files
    q = (
        select(f.c.res_type, f.c.part, func.sum(f.c.count), func.min(f.c.seq))
        .where(f.c.job_id == job_id)
        .group_by(f.c.res_type, f.c.part)
        .order_by(func.min(f.c.seq))
    )
    return [(t, part, int(n)) for t, part, n, _ in conn.execute(q)]


def _progress(conn: Connection, job: Any) -> int:
    """Percent of the candidate resources (of every type to export) already passed by the cursor; only a
    percentage is told, not how many candidates there are (the aggregator must not count what it cannot see)."""
    types = job.types.split(",")
    r = resources
    counts = dict(
        conn.execute(
            select(r.c.res_type, func.count())
            .where(r.c.res_type.in_(types), r.c.deleted == false(), r.c.last_updated <= job.transaction_time)
            .group_by(r.c.res_type)
        ).all()
    )
    total = sum(counts.values())
    if total == 0:
        return 0
    done = sum(counts.get(t, 0) for t in types[: job.type_index])
    if job.type_index < len(types) and job.cursor is not None:
        current_type = types[job.type_index]
        done += conn.execute(
            select(func.count()).where(
                r.c.res_type == current_type,
                r.c.deleted == false(),
                r.c.last_updated <= job.transaction_time,
                r.c.res_id <= job.cursor,
            )
        ).scalar_one()
    return min(99, done * 100 // total)


def _parse_file_name(name: str) -> tuple[str, int]:
    stem, _, ext = name.rpartition(".")
    res_type, _, part = stem.rpartition("-")
    if ext != "ndjson" or res_type not in KINDS or not part.isdigit():
        raise fail(404, "not-found", f"Export file {name} is not known")
    return res_type, int(part)


def mark(conn: Connection, job_id: str, **values: Any) -> int:
    """Update a job's row; returns how many rows changed (0: it was cancelled meanwhile)."""
    return conn.execute(update(export_jobs).where(export_jobs.c.id == job_id).values(**values)).rowcount

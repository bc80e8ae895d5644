"""The background side of Bulk Data export: every node process runs one ExportRunner, which claims a
runnable job (a lease in the job's row: several workers never run one job at once, and a job whose worker
died is taken over once its lease runs out) and advances it one step at a time.

A step reads the next `export_chunk` resources of the current type after the job's cursor (keyset by id,
as of the job's transaction time, filtered in SQL by the owner's access policy, shaped by `policy.shown`)
in a read transaction, then, in a short write transaction, appends them as one NDJSON segment and moves
the cursor, only if the cursor has not moved meanwhile. So a restart or a crash at any point resumes
exactly where the last committed step left off, with nothing written twice. Jobs expired past
`export_retention_hours` are deleted with their files."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Connection, and_, false, func, or_, select, true
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from fhir_node.node import Node
from fhir_node.operations.export import ACCEPTED, COMPLETED, FAILED, RUNNING, forget, mark, owner_principal
from fhir_node.security import policy
from fhir_node.security.access import Access, serving
from fhir_node.store.repository import now
from fhir_node.store.schema import export_files, export_jobs, resources

log = logging.getLogger("fhir_node.export")
#: A claimed job is the claimant's for this long after its last step; then another worker may take it.
LEASE = timedelta(seconds=30)


class ExportRunner:
    """Claims and advances export jobs; `wake` after a kick-off starts it without waiting for the next poll."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.job: str | None = None
        self._wake: asyncio.Event | None = None

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Until cancelled: a step of the claimed job, or else a claim (and the retention purge) per poll."""
        poll = self.node.settings.export_poll_seconds
        self._wake = wake = asyncio.Event()  # bound to this event loop (an app may be served by several)
        while True:
            try:
                busy = await run_in_threadpool(self.work)
            except OperationalError as exc:  # the database is away: try again later
                log.warning("export runner: database unavailable: %s", exc)
                busy = False
            if not busy:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), poll)

    def work(self) -> bool:
        """One step of the claimed job, claiming one first if needed; False when there is nothing to do."""
        if self.job is None:
            purge(self.node)
            self.job = claim(self.node)
            if self.job is None:
                return False
        try:
            finished = step(self.node, self.job)
        except OperationalError:
            raise  # the database, not the job: `run` tries again later
        except Exception as exc:
            log.exception("export job %s failed", self.job)
            with self.node.db.write() as conn:
                mark(conn, self.job, status=FAILED, error=f"The export failed ({type(exc).__name__})", finished=now())
            finished = True
        if finished:
            self.job = None
        return True


def claim(node: Node) -> str | None:
    """Take the oldest runnable job whose lease is free (never run, or its worker gone); its id or None.
    An idle node finds none: that is asked in a read transaction first, so every worker's poll does not
    take the write lock (SQLite's BEGIN IMMEDIATE) when there is nothing to claim."""
    j = export_jobs.c
    at = now()
    runnable = (
        select(j.id)
        .where(j.status.in_((ACCEPTED, RUNNING)), or_(j.lease_until.is_(None), j.lease_until < at))
        .order_by(j.transaction_time)
        .limit(1)
    )
    with node.db.read() as conn:
        if conn.execute(runnable).first() is None:
            return None
    with node.db.write() as conn:
        job_id = conn.execute(runnable.with_for_update(skip_locked=True)).scalar()
        if job_id is not None:
            mark(conn, job_id, status=RUNNING, lease_until=at + LEASE)
        return job_id


def step(node: Node, job_id: str) -> bool:
    """Advance the job by one segment; True once it is complete (or gone: cancelled)."""
    with node.db.read() as conn:
        job = conn.execute(select(export_jobs).where(export_jobs.c.id == job_id)).first()
        if job is None or job.status != RUNNING:
            return True
        types = job.types.split(",")
        done = job.type_index >= len(types)
        if not done:
            res_type = types[job.type_index]
            with serving(Access(owner_principal(job.owner))):
                rows = _next_rows(conn, job, res_type, node.settings.export_chunk)
                lines = [policy.shown(conn, res_type, row.content)[0] for row in rows]
    with node.db.write() as conn:
        if done:
            mark(conn, job_id, status=COMPLETED, finished=now(), lease_until=None)
            return True
        if not rows:
            _advance(conn, job, type_index=job.type_index + 1, cursor=None)
        elif _advance(conn, job, cursor=rows[-1].res_id, exported=job.exported + len(rows)):
            segment = b"\n".join(lines) + b"\n"
            part = _part(conn, job_id, res_type, node)
            conn.execute(
                export_files.insert().values(
                    job_id=job_id, res_type=res_type, part=part, count=len(rows), content=segment
                )
            )
    return False


def purge(node: Node) -> int:
    """Delete the jobs (and files) finished more than `export_retention_hours` ago; how many. Found in a
    read transaction (an expired job stays expired), so a poll with nothing to purge writes nothing."""
    j = export_jobs.c
    cutoff = now() - timedelta(hours=node.settings.export_retention_hours)
    with node.db.read() as conn:
        expired = list(conn.execute(select(j.id).where(j.finished.is_not(None), j.finished < cutoff)).scalars())
    if not expired:
        return 0
    with node.db.write() as conn:
        for job_id in expired:
            forget(conn, job_id)
    return len(expired)


def _next_rows(conn: Connection, job: Any, res_type: str, chunk: int) -> list[Any]:
    """The next resources of `res_type` after the cursor that the job's owner may search, as of the
    job's transaction time (and after `_since`), in id order."""
    r = resources
    allowed = policy.condition(conn, res_type, "s")
    conds: list[ColumnElement[bool]] = [
        r.c.res_type == res_type,
        r.c.deleted == false(),
        r.c.last_updated <= job.transaction_time,
        allowed if allowed is not None else true(),
    ]
    if job.since is not None:
        conds.append(r.c.last_updated > job.since)
    if job.cursor is not None:
        conds.append(r.c.res_id > job.cursor)
    if job.members is not None:
        conds.append(policy.of_patients(res_type, orjson.loads(job.members)))
    q = select(r.c.res_id, r.c.content).where(and_(*conds)).order_by(r.c.res_id).limit(chunk)
    return list(conn.execute(q))


def _advance(conn: Connection, job: Any, **values: Any) -> bool:
    """Move the job on, unless another step moved it first or it was cancelled; renews the lease."""
    j = export_jobs.c
    same_cursor = j.cursor.is_(None) if job.cursor is None else j.cursor == job.cursor
    changed = conn.execute(
        export_jobs.update()
        .where(j.id == job.id, j.status == RUNNING, j.type_index == job.type_index, same_cursor)
        .values(lease_until=now() + LEASE, **values)
    ).rowcount
    return changed == 1


def _part(conn: Connection, job_id: str, res_type: str, node: Node) -> int:
    """Which output file of the type a new segment goes to: about `export_file_resources` per file."""
    f = export_files.c
    segments = conn.execute(select(func.count()).where(f.job_id == job_id, f.res_type == res_type)).scalar_one()
    per_file = max(1, node.settings.export_file_resources // node.settings.export_chunk)
    return segments // per_file

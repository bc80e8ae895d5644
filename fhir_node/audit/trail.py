"""The audit trail of requests: interactions note what they touch as they run, and each request's
AuditEvent is durable before its answer leaves. A write's AuditEvent commits in the write's own
transaction (`stage`); anything else's is made durable by the process's `Writer` when the answer starts
(on SQLite written to the worker's journal, else committed in one transaction for every request then
waiting: group commit), and only then do their answers go; if it cannot be written, the answer becomes a
503 (fail closed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from functools import lru_cache
from urllib.parse import urlencode

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

from fhir_node.audit import chain
from fhir_node.audit.events import Facts, facts, names_resources
from fhir_node.search.index import param_names
from fhir_node.security.access import Record, current
from fhir_node.security.rules import PATIENT_PARAM
from fhir_node.store.database import Database, driver_rows, lock_busy
from fhir_node.store.schema import idx_reference

#: At most this many AuditEvents per transaction: a burst does not hold the write lock (which other
#: workers' writes wait for) for long.
GROUP_LIMIT = 200
#: Seconds the thread waits for the database's lock to index (SQLite), rather than the write wait: behind
#: another worker's writes it would leave the requests it serves waiting (p95 0.4-0.9 s with 2 workers).
INDEX_LOCK_WAIT = 0.01
#: Seconds it then leaves the lock alone, so that a checkpoint finds the database's WAL quiet once.
INDEX_BACKOFF = 0.05
error_log = logging.getLogger("fhir_node.errors")
#: An AuditEvent's facts to chain (None: in a journal already), the loop of the request waiting for it, and
#: what it waits on.
_Item = tuple[Facts | None, asyncio.AbstractEventLoop, asyncio.Future[None]]


def note(
    conn: Connection,
    items: Iterable[tuple[str, str]],
    status: int | None = None,
    versioned: Iterable[tuple[str, str, int]] = (),
) -> None:
    """Record that the current request touched these resources (and so their patients); a write also
    gives the status it answers. `versioned`: resources touched as one version of each (a search's page,
    touched before `items`), whose patients are looked up once per version (see `patients_of`)."""
    record = current().record
    if record is None:
        return
    if status is not None:
        record.status = status
    versioned, items = tuple(versioned), list(items)
    if not items and not versioned:
        return
    if names_resources(record.interaction):
        record.entities.extend([(t, i) for t, i, _ in versioned] + items)
    found = patients_of(conn, items, versioned)
    record.patients = record.patients | found if record.patients else found


def note_query(params: list[tuple[str, str]]) -> None:
    """The search as the server understood it (URL and form parameters), for `entity.query`; encoded only
    when the request is audited."""
    record = current().record
    if record is not None:
        record.query = _encoded(tuple(params))


@lru_cache(maxsize=1024)
def _encoded(params: tuple[tuple[str, str], ...]) -> str:
    """`params` URL-encoded, once for a search repeated: ~15 of an audited search's ~150 us on the event loop."""
    return urlencode(params)


_PATIENTS_OF = f"SELECT res_id, target_type, target_id, url FROM {idx_reference.name} WHERE res_type = {{0}} AND "
#: The Patients of resource versions looked up so far, by (type, id, version): a version's references
#: never change, so this answers as the query would, in any worker. Emptied past _KNOWN_LIMIT entries.
_KNOWN: dict[tuple[str, str, int], frozenset[str]] = {}
_KNOWN_LIMIT = 100_000
#: The same for whole pages (their versions in order): a search repeated (an aggregator's, all day) finds its
#: page's Patients in one look-up, not one per version (~3 against ~25 us for 50). Emptied past _PAGES_LIMIT.
_PAGES: dict[tuple[tuple[str, str, int], ...], frozenset[str]] = {}
_PAGES_LIMIT = 1_000


def _references(conn: Connection, res_type: str, ids: list[str]) -> Iterable[tuple[str, str, str, str]]:
    """The patient references of these resources, in SQL written out for the driver: SQLAlchemy's
    expanding IN cost ~100 of the ~160 µs a page of 50 took (measured, prebuilt statement), and on SQLite
    running it on the driver itself 118 -> 68 µs."""
    names = param_names(res_type, PATIENT_PARAM[res_type])  # the rows that stand for it (`index.SHARED`)
    if conn.dialect.name == "postgresql":  # the names and the ids as arrays
        sql = _PATIENTS_OF.format("%s") + "param = ANY(%s) AND res_id = ANY(%s)"
        return driver_rows(conn, sql, (res_type, list(names), ids))
    marks = ",".join("?" * len(names)), ",".join("?" * len(ids))
    sql = _PATIENTS_OF.format("?") + "param IN ({}) AND res_id IN ({})".format(*marks)
    return driver_rows(conn, sql, (res_type, *names, *ids))


def patients_of(
    conn: Connection, items: Sequence[tuple[str, str]], versioned: tuple[tuple[str, str, int], ...] = ()
) -> AbstractSet[str]:
    """Ids of the Patients these resources are, or belong to (one query per type, none for the versions
    in `_KNOWN`, nothing for a page in `_PAGES`: a search repeated reads the same versions, and the query was
    most of what auditing a page cost the request). The query names only the columns of the resource key
    index and selects `url` too: given `target_type = 'Patient'` or a covering index, SQLite (without
    statistics) scans every reference of the type to the target instead."""
    page = versioned if not items and len(versioned) > 1 else None
    if page is not None and (known := _PAGES.get(page)) is not None:
        return known
    found = {i for t, i in items if t == "Patient"} | {i for t, i, _ in versioned if t == "Patient"}
    by_type: dict[str, list[str]] = {}
    unknown: dict[tuple[str, str], int] = {}
    for t, i, v in versioned:
        if t in PATIENT_PARAM:
            known = _KNOWN.get((t, i, v))
            if known is None:
                unknown[(t, i)] = v
                by_type.setdefault(t, []).append(i)
            else:
                found |= known
    for t, i in items:
        if t in PATIENT_PARAM:
            by_type.setdefault(t, []).append(i)
    for t, ids in by_type.items():
        of: dict[str, set[str]] = {}
        for res_id, target_type, target_id, _ in _references(conn, t, ids):
            if target_type == "Patient" and target_id:
                of.setdefault(res_id, set()).add(target_id)
                found.add(target_id)
        if len(_KNOWN) > _KNOWN_LIMIT:
            _KNOWN.clear()
        for i in ids:
            if (t, i) in unknown:
                _KNOWN[(t, i, unknown[(t, i)])] = frozenset(of.get(i, ()))
    if page is not None:
        if len(_PAGES) > _PAGES_LIMIT:
            _PAGES.clear()
        known = _PAGES[page] = frozenset(found)
        return known
    return found


def stage(conn: Connection) -> None:
    """Inside a write transaction, before it commits: the AuditEvent of what the request did so far."""
    access = current()
    record = access.record
    if record is not None:
        status = 200 if record.interaction in ("transaction", "batch") else record.status
        if chain.record(conn, [facts(access, record, status, access.server)]):
            record.staged = True


def committed() -> None:
    """The write transaction holding the staged AuditEvent committed: the request is audited, and a later
    transaction of the same request (a batch's next entry) gets an AuditEvent of its own."""
    record = current().record
    if record is not None:
        record.written = True
        record.entities.clear()
        record.patients = frozenset()


class Writer:
    """One per process and database. On SQLite, where the chain has a file of its own, a request's facts go
    to this process's journal (`store.audit_journal`), durable when written, and the answer goes on: ~10 µs
    where committing them on the event loop cost ~140-230 µs. Otherwise (PostgreSQL) requests hand their
    facts over and wait. One thread (started on first use) chains what the journals hold and what was
    handed over meanwhile in one write transaction (group commit), then releases the requests that wait,
    or fails them all; where another process chains the journals (`followed`: `audit.follower`, which
    `fhir-node serve` runs on SQLite), the thread leaves them to it but past the lag. Nothing outlives the
    commit but the journals, which every worker reads, so workers and hosts share no state.

    Indexing the chained events for search (`chain.index`, ~1 ms each) waits: once nothing was audited for
    `IDLE` seconds, the thread indexes them a batch at a time until none is left or requests come again. A
    burst is served at the cost of chaining alone; under sustained load, once more than `lag` events wait
    (or `lag` requests were journaled since the thread's last group), requests wait for the thread's next
    group (on SQLite their facts written first), and each group is followed by indexing a batch, which the
    next group waits for, so what waits stays bounded (and so does what a request that reads AuditEvents
    may have to index first)."""

    #: Seconds without AuditEvents to write before the writer indexes the chained ones.
    IDLE = 0.5
    #: Seconds a group waits at most, after its first AuditEvent, for those of the other requests under
    #: way: one commit (and one emptied page cache for each reader) for them all, not one each.
    LINGER = 0.001
    #: Seconds the thread lets journals fill before it chains what they hold: one transaction for many
    #: requests (each costs ~0.5 ms, with the journals read and their offsets written; after 5 ms it held
    #: ~2 events at ~400 searches/s, and the audit cost more than committing each on the event loop).
    JOURNAL_LINGER = 0.1
    #: Seconds the app's stop waits for the thread's last transaction (the database may be gone).
    CLOSE_WAIT = 10.0

    def __init__(self, db: Database, lag: int, followed: bool = False) -> None:
        self.db = db
        self.lag = lag
        #: Another process chains the journals (`audit.follower`): this one leaves them to it but past the lag.
        self.followed = followed and db.journal is not None
        self._queue: list[_Item] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._under_way = 0  # requests begun whose AuditEvent is not handed over yet
        self._staged = True  # writes' AuditEvents may wait to be chained (`chain.drain`): at first, any left
        self._journaled = self.db.journal is not None and not self.followed  # since (at first: any left)
        self._journaled_since = 0  # by this process, not chained yet as far as it knows: past `lag`, requests wait
        self._behind = False  # events chained, not yet all indexed
        self._last_append = 0.0  # when a request last audited
        self._past_lag = False  # more than `lag` events waited at the last group
        self._index_again = 0.0  # no indexing before (another process held the lock)
        self._closing = False  # the app stops: chain what waits, then end the thread

    @contextlib.contextmanager
    def request(self, record: Record | None) -> Iterator[None]:
        """Around one audited request: while it runs, a group may wait for its AuditEvent (LINGER at most)."""
        if record is None:
            yield
            return
        with self._wake:
            record.awaited = True
            self._under_way += 1
        try:
            yield
        finally:
            with self._wake:
                self._no_longer_awaited(record)  # if it answered without one (a write carried it) or failed
                if record.staged:
                    self._staged = True
                    self._start()
                if self._queue or record.staged:  # a group may be waiting for it; else leave the thread be
                    self._wake.notify()

    @property
    def under_way(self) -> int:
        """Requests under way whose AuditEvent a group may still wait for."""
        with self._wake:
            return self._under_way

    def _no_longer_awaited(self, record: Record) -> None:
        if record.awaited:
            record.awaited = False
            self._under_way -= 1

    async def flush(self, status: int) -> None:
        """When the answer starts: the request's AuditEvent (unless a committed write carried one), durable
        when this returns; raises what writing it raised."""
        access = current()
        record = access.record
        if record is None or record.written:
            return
        said = facts(access, record, status, access.server)
        journal = self.db.journal
        self._last_append = time.monotonic()
        if journal is not None:
            journal.append(said[1])
            with self._wake:
                self._journaled_since += 1
                self._no_longer_awaited(record)
                wait = self._past_lag or self._journaled_since > self.lag
                if wait or not self.followed:
                    self._journaled = True
                    self._start()
                    self._wake.notify()
            if not wait:
                record.written = True
                return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._hand_over((None if journal is not None else said, loop, done), record)
        await done
        record.written = True

    def _hand_over(self, item: _Item, record: Record) -> None:
        """To the thread's next group."""
        with self._wake:
            self._queue.append(item)
            self._no_longer_awaited(record)
            self._start()
            self._wake.notify()

    def close(self) -> None:
        """When the app stops: what waits to be chained is (the journals, writes' staged events, requests
        handed over), then the thread ends, so nothing of this app writes the chain once its database is
        closed (the thread, left running, chained an app's last requests while a test already changed its
        chain: a flaky failure). Indexing is left to the next start, or to whoever reads AuditEvents."""
        with self._wake:
            self._closing = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join(self.CLOSE_WAIT)
            if thread.is_alive():
                error_log.warning(
                    "the audit writer did not finish within %s s; what it holds stays journaled", self.CLOSE_WAIT
                )

    def _start(self) -> None:
        """The writer's thread, unless it runs (holding `_wake`)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._wake:
                idle = False
                while not (self._queue or self._staged or self._journaled):
                    if self._closing:
                        return
                    if not self._behind:  # until it chains some: others' are indexed by them, or when read
                        self._wake.wait()
                    elif not self._wake.wait(self.IDLE) and time.monotonic() - self._last_append >= self.IDLE:
                        idle = True  # time to index
                        break
                journaled = self._journaled
                ends = time.monotonic() + self.LINGER
                while self._queue and self._under_way > 0 and len(self._queue) < GROUP_LIMIT:
                    left = ends - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
            if journaled and not self._queue and not self._closing:
                time.sleep(self.JOURNAL_LINGER)
            with self._wake:
                group, self._queue = self._queue[:GROUP_LIMIT], self._queue[GROUP_LIMIT:]
                staged, self._staged = self._staged, False
                journaled, self._journaled = self._journaled, False
                taken = self._journaled_since
            if not group and not staged and not journaled:
                if idle:
                    behind = self._index()
                    with self._wake:
                        self._behind = behind
                continue
            self._group(group, staged, journaled, taken)

    def _group(self, group: list[_Item], staged: bool, journaled: bool, taken: int) -> None:
        """One transaction: what writes staged, what the journals hold (at least the `taken` facts this
        process journaled), what requests handed over; then those requests released (or failed), and past
        the lag a batch indexed."""
        with self._wake:
            self._behind = True
        error: Exception | None = None
        over = 0
        try:
            with self.db.write(chain=True) as conn:
                if staged:
                    chain.drain(conn)
                if journaled and self.db.journals is not None:
                    chain.absorb(conn, self.db.journals)
                handed = [said for said, _, _ in group if said is not None]
                if handed:
                    chain.extend(conn, handed)
                over = chain.waiting(conn) - self.lag
        except Exception as exc:
            error = exc
            if journaled and not self._closing:  # what the journals hold stays there: read at the next group
                with self._wake:
                    self._journaled = True
            if not group:
                error_log.warning("chaining the audit journals failed, retried: %s", exc)
                time.sleep(INDEX_BACKOFF)
        with self._wake:
            self._past_lag = over > 0  # until a group finds what waits under the lag again
            if error is None:
                self._journaled_since -= taken  # those journaled meanwhile still count
        waiting: dict[tuple[asyncio.AbstractEventLoop, Exception | None], list[asyncio.Future[None]]] = {}
        for said, loop, done in group:  # those journaled are durable, whatever became of the transaction
            waiting.setdefault((loop, error if said is not None else None), []).append(done)
        for (loop, failed), futures in waiting.items():
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits there any more
                loop.call_soon_threadsafe(_settle, futures, failed)
        if over > 0:
            self._index()

    def _index(self, limit: int | None = None) -> bool:
        """One batch of chained events indexed (`index_batch`); whether more may wait. Not while a writer of
        this process waits for the database's lock: indexing can wait (a reader of AuditEvents has it done
        first)."""
        if self.db.writers_waiting or time.monotonic() < self._index_again:
            return True
        more = index_batch(self.db, limit)
        if more is None:
            self._index_again = time.monotonic() + INDEX_BACKOFF
            return True
        return more


def index_batch(db: Database, limit: int | None = None) -> bool | None:
    """One batch of chained events indexed: whether more may wait, or None when another process held the
    database's lock (it writes, or indexes: try again after INDEX_BACKOFF). A failure is logged and retried
    at the next idle time (nothing is lost: the events stay chained)."""
    try:
        with db.write(lock_wait=INDEX_LOCK_WAIT) as conn:
            return chain.index(conn, limit) > 0
    except Exception as exc:
        if isinstance(exc, OperationalError) and lock_busy(exc):
            return None
        error_log.warning("indexing chained AuditEvents failed, retried later: %s", exc)
        return False


def _settle(futures: list[asyncio.Future[None]], error: Exception | None) -> None:
    for done in futures:
        if not done.done():  # a request cancelled (client gone) no longer waits
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

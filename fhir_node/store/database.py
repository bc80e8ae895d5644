"""Engine creation, SQLite tuning, read/write transactions, and migrations, for SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import contextlib
import math
import select
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.util import await_, greenlet_spawn

from fhir_node.store.audit_file import audit_file, move_chain, set_aside_orphan
from fhir_node.store.audit_journal import Journal, journals_of, prepare

MIGRATIONS = Path(__file__).with_name("migrations")
_MIGRATION_LOCK = zlib.crc32(b"fhir-node:migrate")
#: SQLite asks the progress handler whether to stop every this many virtual-machine steps.
_PROGRESS_STEPS = 1000
#: WAL pages between automatic checkpoints (see `_tune_sqlite`).
_WAL_PAGES = 10_000
#: Bytes of the database file SQLite reads through a memory map (see `_tune_sqlite`).
MMAP_BYTES = 1 << 30
#: A table of each SQLite file a write transaction deletes nothing from, to take that file's lock.
_LOCK_TABLE = {"main": "resources", "audit": "audit_anchor"}
#: Connections kept for reads on the event loop, at most (see `Database._take_kept`).
_KEPT = 5


class Cancel:
    """Stops the statements one request runs, from another thread (its client went away): SQLite's
    progress handler sees the flag, a PostgreSQL statement in flight gets a cancel request."""

    def __init__(self) -> None:
        self.cancelled = False
        self._running: set[Any] = set()
        self._guard = threading.Lock()

    def fire(self) -> None:
        with self._guard:
            self.cancelled = True
            for dbapi_conn in self._running:
                if hasattr(dbapi_conn, "cancel_safe"):
                    dbapi_conn.cancel_safe()

    def running(self, dbapi_conn: Any, now: bool) -> None:
        with self._guard:
            if now:
                self._running.add(dbapi_conn)
            else:
                self._running.discard(dbapi_conn)


#: The Cancel of the request whose statements run in this context (None: nothing can cancel them).
cancelling: ContextVar[Cancel | None] = ContextVar("cancelling", default=None)
#: When a read tried on the event loop must be done by (monotonic seconds; None: no such try).
_loop_deadline: ContextVar[float | None] = ContextVar("loop_deadline", default=None)
#: Whether this context's reads await PostgreSQL on the event loop (see `Database.awaiting`).
_awaiting: ContextVar[bool] = ContextVar("awaiting", default=False)
T = TypeVar("T")


def lock_busy(exc: OperationalError) -> bool:
    """Whether SQLite refused a lock another connection holds (past its busy timeout)."""
    return "locked" in str(exc.orig)


class OverBudget(Exception):
    """A read tried on the event loop outran its budget (see `Database.on_loop`): run it in a thread."""


def normalise_url(url: str) -> str:
    """Plain `postgresql://` URLs use psycopg 3 (the driver we ship), not psycopg2."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


class Database:
    """One engine; `write()` is a transaction that takes the write lock up front, `read()` a snapshot."""

    def __init__(self, url: str, statement_timeout: float | None = None, write_wait: float = 120) -> None:
        """`statement_timeout`: seconds after which a statement is cancelled (None: never, for the CLI's long
        jobs); `write_wait`: seconds a writer waits for the write lock another holds."""
        self.url = normalise_url(url)
        self.statement_timeout = statement_timeout
        self.write_wait = write_wait
        self._writing: ContextVar[Connection | None] = ContextVar(f"writing:{id(self)}", default=None)
        self._kept: list[Connection] = []
        self._wanting = 0  # writers of the database waiting for its write lock (see `writers_waiting`)
        self._wanting_guard = threading.Lock()
        # A Database dropped undisposed (an app run without its lifespan) gives its kept connections back to
        # the pool, which closes them, instead of leaving them checked out for the garbage collector.
        weakref.finalize(self, _give_back, self._kept)
        parsed = make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        #: SQLite: the AuditEvent chain's own file (`store.audit_file`); None: the chain is in the database.
        self.chain_file: Path | None = None
        #: SQLite with the chain's file: where the workers' journals of audited requests are, and this
        #: process's (`store.audit_journal`).
        self.journals: Path | None = None
        self.journal: Journal | None = None
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                set_aside_orphan(parsed.database)
                self.chain_file = audit_file(parsed.database)
                self.journals = journals_of(self.chain_file)
                self.journal = Journal(self.journals)
                weakref.finalize(self, self.journal.close)
            self.engine = create_engine(
                self.url, connect_args={"check_same_thread": False}, execution_options={"write_wait": write_wait}
            )
            _tune_sqlite(self.engine, statement_timeout, write_wait, self.chain_file)
        else:
            self.engine = create_engine(
                self.url,
                paramstyle="format",  # psycopg's `%s`: positional, as SQLite's `?` (see `store/ready.py`)
                pool_size=10,
                max_overflow=20,
                connect_args=_pg_options(statement_timeout),
                execution_options={"write_wait": write_wait},
            )
            # Reads on the event loop (`awaiting`): psycopg's async connections, in autocommit (see below).
            self._loop_engine = create_async_engine(
                parsed.set(drivername="postgresql+psycopg_async"),
                paramstyle="format",
                pool_size=5,
                max_overflow=15,
                pool_reset_on_return=None,
                isolation_level="AUTOCOMMIT",
                connect_args=_pg_options(statement_timeout),
            )
            for engine in (self.engine, self._loop_engine.sync_engine):
                _track_statements(engine)
                _replace_closed(engine)
        # PostgreSQL reads in autocommit: under READ COMMITTED every statement takes its own snapshot, in a
        # transaction or not, so BEGIN and COMMIT (two of a read's three round trips) bought nothing.
        self._reader = self.engine if self.is_sqlite else self.engine.execution_options(isolation_level="AUTOCOMMIT")

    @contextlib.contextmanager
    def write(self, chain: bool = False, lock_wait: float | None = None) -> Iterator[Connection]:
        """A write transaction: SQLite takes the write lock at BEGIN so concurrent writers queue, not fail.
        Reads made inside it (a transaction Bundle's GET entries) use it and see its writes. `chain`: it
        writes the AuditEvent chain only, and where the chain has a file of its own takes that file's lock
        alone (the database's writers and the audit writer then never wait for each other). `lock_wait`:
        on SQLite, seconds to wait for the lock instead of `write_wait`, for work that had better give up
        (an OperationalError, `locked`) and come back than wait behind another process."""
        engine = self.engine
        if self.is_sqlite:
            engine = engine.execution_options(sqlite_immediate="audit" if chain else "main", sqlite_wait=lock_wait)
        wanting = not chain
        if wanting:
            self._count_wanting(1)
        try:
            with engine.begin() as conn:  # the lock taken
                if wanting:
                    self._count_wanting(-1)
                    wanting = False
                token = self._writing.set(conn)
                try:
                    yield conn
                finally:
                    self._writing.reset(token)
        finally:
            if wanting:  # BEGIN failed
                self._count_wanting(-1)

    def _count_wanting(self, change: int) -> None:
        with self._wanting_guard:
            self._wanting += change

    @property
    def writers_waiting(self) -> bool:
        """Whether a writer of this process waits for the database's write lock: work that can wait (the
        audit writer's indexing) lets it go first. SQLite's busy handler polls, so a thread that takes the
        lock again and again would otherwise starve a big write for as long as it has work."""
        return self._wanting > 0

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only connection (or the enclosing write transaction, when there is one): on SQLite a
        transaction, one snapshot for everything a request reads; on PostgreSQL autocommit (see __init__)."""
        active = self._writing.get()
        if active is not None:
            yield active
            return
        on_loop = _loop_deadline.get() is not None if self.is_sqlite else _awaiting.get()
        if not on_loop:
            with self._reader.begin() as conn:
                yield conn
            return
        conn = self._take_kept()
        try:
            if self.is_sqlite:
                with _snapshot(conn):
                    yield conn
            else:
                yield conn
        finally:
            self._keep(conn)

    def _take_kept(self) -> Connection:
        """A connection kept for reads on the event loop (`on_loop`, `awaiting`), else a new one: the pool's
        checkout and return cost more than a small search's SQL (SQLite: ~12 % of a search's CPU; PostgreSQL
        ~40 us). One taken is the read's alone (reads on PostgreSQL interleave while they await, and a read
        may begin inside another); a PostgreSQL connection the server closed meanwhile is replaced, as the
        pool's checkout does (`_replace_closed`)."""
        while self._kept:
            try:
                conn = self._kept.pop()
            except IndexError:  # another loop's thread took the last one
                break
            if conn.invalidated or (not self.is_sqlite and _server_closed(conn.connection.driver_connection)):
                conn.invalidate()
                conn.close()
                continue
            return conn
        return (self.engine if self.is_sqlite else self._loop_engine.sync_engine).connect()

    def _keep(self, conn: Connection) -> None:
        """Give a read's connection back to the kept ones (a SQLite one without its deadline and Cancel, as a
        return to the pool does; one that SQLAlchemy began on PostgreSQL ended, a no-op under autocommit),
        or to the pool past `_KEPT`."""
        if self.is_sqlite:
            conn.info["statement"].update(deadline=math.inf, cancel=None)
        if conn.invalidated or len(self._kept) >= _KEPT:
            conn.close()
            return
        if conn.in_transaction():
            conn.rollback()
        self._kept.append(conn)

    @contextlib.contextmanager
    def on_loop(self, budget: float) -> Iterator[None]:
        """Reads made inside get `budget` seconds in all: SQLite's progress handler stops a statement that
        would run past it, and no statement starts after it; either raises OverBudget, for the caller to
        run the read again in a worker thread. Most searches take a fraction of a millisecond, less than
        the hand-off to a thread costs (~370 us of CPU, measured); a long one holds the event loop (and
        `/health`) no longer than the budget."""
        deadline = time.monotonic() + budget
        token = _loop_deadline.set(deadline)
        try:
            yield
        except OperationalError as exc:
            if time.monotonic() >= deadline and "interrupted" in str(exc.orig):
                raise OverBudget from exc
            raise
        finally:
            _loop_deadline.reset(token)

    async def awaiting(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the event loop, its PostgreSQL reads awaiting the network on psycopg's async
        connections instead of blocking a worker thread: the sync code runs in a greenlet that hands each
        wait to the loop (SQLAlchemy's asyncio bridge). The hand-off to a thread cost more CPU than a
        search's SQL (~150-300 us, measured); cancelling the task cancels the statement (psycopg sends the
        server a cancel request)."""
        token = _awaiting.set(True)
        try:
            return await greenlet_spawn(fn, *args)
        finally:
            _awaiting.reset(token)

    def lock(self, conn: Connection, key: str) -> None:
        """Serialise writers on `key` until commit (PostgreSQL; SQLite writers are already serial)."""
        lock(conn, key)

    def ping(self) -> bool:
        """True when the database answers a trivial query."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    def migrate(self) -> None:
        """Bring the schema to the newest revision; PostgreSQL workers starting together take turns."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.execution_options(statement_timeout=None).begin() as conn:
            if not self.is_sqlite:
                conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        move_chain(self.engine, self.chain_file)
        if self.chain_file is not None:
            prepare(self.engine)

    async def dispose_loop(self) -> None:
        """Close the connections of reads on the event loop, from a coroutine (PostgreSQL's are async)."""
        if self.is_sqlite:
            _give_back(self._kept)
            return
        await greenlet_spawn(_give_back, self._kept)
        await self._loop_engine.dispose()

    def dispose(self) -> None:
        """Close every connection: SQLite's kept ones at once; PostgreSQL's async ones through an event loop
        of their own when none runs in this thread (the CLI, tests), else the coroutine's caller awaited
        `dispose_loop` first. (SQLite needs no event loop for it: the CLI and the tests dispose often.)"""
        if self.is_sqlite:
            _give_back(self._kept)
            if self.journal is not None:
                self.journal.close()
        else:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                asyncio.run(self.dispose_loop())
        self.engine.dispose()


def _give_back(kept: list[Connection]) -> None:
    """Close the kept connections (back to their pool)."""
    while kept:
        kept.pop().close()


def lock(conn: Connection, *keys: str) -> None:
    """Serialise writers on each of `keys` until `conn` commits (PostgreSQL; SQLite writers are already
    serial), taken in the order given, waiting at most the engine's `write_wait` seconds, not the statement
    timeout (past it lock_timeout fails the statement: a 503). One round trip however many keys: the SETs
    and the locks travel in one simple-query message."""
    if conn.dialect.name != "postgresql" or not keys:
        return
    numbers = ",".join(str(zlib.crc32(k.encode())) for k in keys)
    taken = f"SELECT pg_advisory_xact_lock(k) FROM unnest(ARRAY[{numbers}]::bigint[]) AS k"
    wait = conn.get_execution_options().get("write_wait")
    if wait is None:
        conn.exec_driver_sql(taken)
        return
    conn.exec_driver_sql(
        f"SET LOCAL lock_timeout = {int(wait * 1000)}; SET LOCAL statement_timeout = 0; {taken}; "
        "RESET statement_timeout; RESET lock_timeout"
    )


@contextlib.contextmanager
def unprepared(conn: Connection) -> Iterator[None]:
    """Statements run inside are planned for their values every time (PostgreSQL): psycopg prepares a
    statement once a connection ran it 5 times, and after 5 plans of their own PostgreSQL may switch it to
    a plan for any values. For a count over thousands of index rows that plan was a nested loop the
    estimate put at one row: `_summary=count` of 52,258 EpisodeOfCare at 100,000 took 70-90 ms for the first
    ten runs on a connection and 180-210 ms from then on (2026-12-02). Planning costs ~0.4 ms, little
    beside such a count, too much for every page of a search."""
    if conn.dialect.name != "postgresql":
        yield
        return
    driver: Any = conn.connection.driver_connection
    kept = driver.prepare_threshold
    driver.prepare_threshold = None
    try:
        yield
    finally:
        driver.prepare_threshold = kept


def _pg_options(statement_timeout: float | None) -> dict[str, str]:
    """Every PostgreSQL session gets the statement timeout (the server cancels what runs longer)."""
    return {"options": f"-c statement_timeout={int(statement_timeout * 1000)}"} if statement_timeout else {}


def _replace_closed(engine: Engine) -> None:
    """A pooled connection the server has closed (restart, pg_terminate_backend, idle timeout) is replaced
    at checkout without the round trip of a ping: an idle connection's socket turns readable only when the
    server closed it or sent its FATAL goodbye, which a zero-timeout poll sees locally. Should the server go
    between this check and the statement, that statement fails (a 503) and SQLAlchemy invalidates the pool."""

    @event.listens_for(engine, "checkout")
    def _on_checkout(_dbapi_conn, _record, proxy) -> None:  # type: ignore[no-untyped-def]
        if _server_closed(proxy.driver_connection):
            raise DisconnectionError("the server closed this connection")


def _server_closed(driver: Any) -> bool:
    """Whether an idle psycopg connection (sync or async) is closed, or its server closed it."""
    if driver.closed or driver.broken:
        return True
    idle = select.poll()
    idle.register(driver.fileno(), select.POLLIN)
    return bool(idle.poll(0))


def _track_statements(engine: Engine) -> None:
    """While a statement runs, the request's Cancel (if any) knows its connection, to send PostgreSQL a
    cancel request (SQLite needs none of this: its progress handler reads the Cancel, see `_tune_sqlite`)."""

    @event.listens_for(engine, "before_cursor_execute")
    def _started(conn, _cursor, _statement, _params, _context, _many) -> None:  # type: ignore[no-untyped-def]
        cancel = cancelling.get()
        if cancel is not None:
            cancel.running(conn.connection.dbapi_connection, True)

    @event.listens_for(engine, "after_cursor_execute")
    def _ended(conn, _cursor, _statement, _params, _context, _many) -> None:  # type: ignore[no-untyped-def]
        cancel = cancelling.get()
        if cancel is not None:
            cancel.running(conn.connection.dbapi_connection, False)

    @event.listens_for(engine, "handle_error")
    def _failed(context) -> None:  # type: ignore[no-untyped-def]
        cancel = cancelling.get()
        if cancel is not None and context.connection is not None and context.connection.connection is not None:
            cancel.running(context.connection.connection.dbapi_connection, False)


def _arm(conn: Connection) -> None:
    """Before a SQLite statement: the deadline its progress handler enforces (the statement timeout, or
    the event loop's budget when sooner; OverBudget when that is already spent) and the request's Cancel."""
    statement = conn.info["statement"]
    timeout = conn.get_execution_options().get("statement_timeout", statement["timeout"])
    started = time.monotonic()
    loop_deadline = _loop_deadline.get()
    if loop_deadline is not None and started >= loop_deadline:
        raise OverBudget
    statement["deadline"] = min(started + timeout if timeout else math.inf, loop_deadline or math.inf)
    statement["cancel"] = cancelling.get()


def driver_rows(conn: Connection, sql: str, params: Any = (), many: bool = False) -> list[Any]:
    """The rows (tuples) of SQL written for the connection's driver (`many`: an executemany of a list of
    parameter tuples), run straight on the driver's connection: SQLAlchemy's execute and Row objects cost
    ~25-60 us a statement on SQLite and ~150 us a page of 50 on PostgreSQL (measured). On PostgreSQL the
    results come in binary (bytea as its bytes, not hex for the server to write and psycopg to read: a
    page of 50 costs ~35 % less CPU on either side), on psycopg's async connection when the read awaits on
    the event loop (`Database.awaiting`). The same deadline and cancellation as any statement; a driver
    error raised as SQLAlchemy raises it, the connection invalidated when it was lost."""
    fairy = conn.connection
    dbapi_conn: Any = fairy.dbapi_connection
    cancel = None
    if conn.dialect.name == "sqlite":
        _arm(conn)
        cursor = dbapi_conn.cursor()
    else:
        if (cancel := cancelling.get()) is not None:
            cancel.running(dbapi_conn, True)
        cursor = fairy.driver_connection.cursor(binary=True)  # type: ignore[union-attr]
    dbapi = conn.dialect.loaded_dbapi
    try:
        if conn.dialect.is_async:
            return await_(_rows_awaited(cursor, sql, params, many))
        if many:
            cursor.executemany(sql, params)
        else:
            cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description is not None else []
    except dbapi.Error as exc:
        lost = conn.dialect.is_disconnect(exc, dbapi_conn, cursor)
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            sql, params, exc, dbapi.Error, connection_invalidated=lost, dialect=conn.dialect
        ) from exc
    finally:
        if cancel is not None:
            cancel.running(dbapi_conn, False)


async def _rows_awaited(cursor: Any, sql: str, params: Any, many: bool) -> list[Any]:
    """`driver_rows` on psycopg's async cursor: one wait on the event loop for the statement and its rows."""
    if many:
        await cursor.executemany(sql, params)
    else:
        await cursor.execute(sql, params)
    return await cursor.fetchall() if cursor.rownumber is not None else []  # (rows: `description` builds columns)


def _begin(conn: Connection, schema: str | None) -> None:
    """A write transaction on `conn` holding the write lock of `schema`'s file (None: no file attached, the
    database's). BEGIN IMMEDIATE would lock every attached file: a write statement that changes nothing
    takes the lock of its own file only (and may wait for it, failing with an OperationalError)."""
    if schema is not None and _has_lock_table(conn, schema):
        driver_rows(conn, "BEGIN")
        driver_rows(conn, f"DELETE FROM {schema}.{_LOCK_TABLE[schema]} WHERE 0")
    else:  # also a database the migrations have not made yet
        driver_rows(conn, "BEGIN IMMEDIATE")  # may wait for the lock and fail (an OperationalError)


@contextlib.contextmanager
def _snapshot(conn: Connection) -> Iterator[None]:
    """A SQLite read transaction (one snapshot for all a request reads) begun and ended on the driver's
    connection: SQLAlchemy's begin and commit around it cost 7-10 us against ~2 (measured, on the event
    loop for every search). A statement SQLAlchemy runs itself in it autobegins SQLAlchemy's transaction
    on the one already begun (`_on_begin`), which then ends it."""
    raw: Any = conn.connection.dbapi_connection
    raw.execute("BEGIN")
    done = False
    try:
        yield
        done = True
    finally:
        if conn.in_transaction():
            (conn.commit if done else conn.rollback)()
        elif not conn.invalidated:
            if not done:
                raw.rollback()
            elif raw.in_transaction:  # a statement, not `commit()`: 5.5 against 7.7 us (measured, in process)
                raw.execute("COMMIT")


def _has_lock_table(conn: Connection, schema: str) -> bool:
    """Whether `schema` holds its `_LOCK_TABLE` yet (asked once per connection, then only while it does not)."""
    known: set[str] = conn.connection.info.setdefault("lock_tables", set())
    if schema not in known:
        query = f"SELECT 1 FROM {schema}.sqlite_master WHERE type = 'table' AND name = ?"
        if conn.connection.dbapi_connection.execute(query, (_LOCK_TABLE[schema],)).fetchone():  # type: ignore[union-attr]
            known.add(schema)
    return schema in known


def _tune_sqlite(engine: Engine, statement_timeout: float | None, write_wait: float, audit: Path | None) -> None:
    """WAL for concurrent readers, reads through a memory map, a busy timeout of `write_wait` (writers queue
    for the lock rather than fail), explicit BEGIN so `write()` can say IMMEDIATE, a progress handler that
    stops a statement past its deadline or when its request is cancelled (SQLite has no statement timeout of
    its own), and the AuditEvent chain's file attached (`store.audit_file`)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        schemas = ["main"]
        if audit is not None:
            cur.execute("ATTACH DATABASE ? AS audit", (str(audit),))
            schemas.append("audit")
            record.info["audit_apart"] = True
        for schema in schemas:
            cur.execute(f"PRAGMA {schema}.journal_mode=WAL")
            cur.execute(f"PRAGMA {schema}.synchronous=NORMAL")
            cur.execute(f"PRAGMA {schema}.journal_size_limit={_WAL_PAGES * 4096}")
        # Checkpoint every ~40 MB of WAL, not SQLite's ~4 MB: a page many commits change is copied back
        # to the database once per checkpoint. Per AuditEvent written in groups of 4: 2,650 -> 2,080 us of
        # CPU, 5.5-6.8 -> 2.6-3.6 ms of wall time (2026-11-30). After a checkpoint the file shrinks to that size.
        cur.execute(f"PRAGMA wal_autocheckpoint={_WAL_PAGES}")
        # Reads through a memory map of the database file (the OS's page cache, shared by every connection and
        # worker) instead of a read() into each connection's 2 MB page cache: CPU per search of the compare mix
        # 330 -> 318 us at 2,000 EpisodeOfCare, 397 -> ~370 at 100,000 (a 413 MB file; paired wrk slices).
        cur.execute(f"PRAGMA main.mmap_size={MMAP_BYTES}")
        cur.execute(f"PRAGMA busy_timeout={int(write_wait * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()
        statement: dict[str, Any] = {"deadline": math.inf, "cancel": None, "timeout": statement_timeout}
        record.info["statement"] = statement

        def stop() -> bool:
            cancel = statement["cancel"]
            return time.monotonic() > statement["deadline"] or (cancel is not None and cancel.cancelled)

        dbapi_conn.set_progress_handler(stop, _PROGRESS_STEPS)

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn, record) -> None:  # type: ignore[no-untyped-def]
        if "statement" in record.info:
            record.info["statement"].update(deadline=math.inf, cancel=None)

    @event.listens_for(engine, "before_cursor_execute")
    def _deadline(conn, _cursor, _statement, _params, _context, _many) -> None:  # type: ignore[no-untyped-def]
        _arm(conn)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        schema = options.get("sqlite_immediate")
        dbapi_conn: Any = conn.connection.dbapi_connection
        if not schema:  # takes no lock, touches no file: straight on the DBAPI connection (cheaper than execute)
            if not dbapi_conn.in_transaction:  # else a `_snapshot` began it
                dbapi_conn.execute("BEGIN")
            return
        wait = options.get("sqlite_wait")
        if wait is not None:
            dbapi_conn.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")
        try:
            _begin(conn, schema if audit is not None else None)
        finally:
            if wait is not None:
                dbapi_conn.execute(f"PRAGMA busy_timeout={int(write_wait * 1000)}")

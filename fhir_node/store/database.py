"""Engine creation, SQLite tuning, read/write transactions, and migrations, for SQLite and PostgreSQL alike."""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).with_name("migrations")
_MIGRATION_LOCK = zlib.crc32(b"fhir-node:migrate")


def normalise_url(url: str) -> str:
    """Plain `postgresql://` URLs use psycopg 3 (the driver we ship), not psycopg2."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


class Database:
    """One engine; `write()` is a transaction that takes the write lock up front, `read()` a snapshot."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        self._writing: ContextVar[Connection | None] = ContextVar(f"writing:{id(self)}", default=None)
        parsed = make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(self.url, connect_args={"check_same_thread": False})
            _tune_sqlite(self.engine)
        else:
            self.engine = create_engine(self.url, pool_size=10, max_overflow=20, pool_pre_ping=True)

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: SQLite takes the write lock at BEGIN so concurrent writers queue, not fail.
        Reads made inside it (a transaction Bundle's GET entries) use it and see its writes."""
        engine: Engine = self.engine.execution_options(sqlite_immediate=True) if self.is_sqlite else self.engine
        with engine.begin() as conn:
            token = self._writing.set(conn)
            try:
                yield conn
            finally:
                self._writing.reset(token)

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction: one consistent snapshot for everything a request reads (or the
        enclosing write transaction, when there is one)."""
        active = self._writing.get()
        if active is not None:
            yield active
            return
        with self.engine.begin() as conn:
            yield conn

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
        with self.engine.begin() as conn:
            if not self.is_sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def dispose(self) -> None:
        self.engine.dispose()


def lock(conn: Connection, key: str) -> None:
    """Serialise writers on `key` until `conn` commits (PostgreSQL; SQLite writers are already serial)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(key.encode())})


def _tune_sqlite(engine: Engine) -> None:
    """WAL for concurrent readers, a busy timeout, and explicit BEGIN so `write()` can say IMMEDIATE."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

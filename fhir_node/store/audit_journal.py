"""On SQLite, each worker's journal of the facts of its audited requests (`audit.events.facts`), in files
beside the chain's (`<chain file>-journals/`). A request's facts are durable once written there: the
operating system holds them, so a kill -9 of the worker loses none (as with SQLite's WAL, which the node
does not sync at each commit either). That costs a request ~10 µs, where committing them to the chain's file
on the event loop cost ~140-230 µs (2026-12-01). The audit writer's thread chains what the journals hold,
many requests' in one transaction (`audit.chain.absorb`), and records there how far it read each file
(`audit_journal`, in the chain's file): nothing is chained twice or left out, whichever worker, or command,
reads them. A worker holds an exclusive lock on its file while it may write there; a file whose lock is free
and that was read to its end is removed."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from datetime import datetime
from pathlib import Path

from sqlalchemy import BigInteger, Column, Connection, Engine, MetaData, String, Table, delete

log = logging.getLogger("fhir_node.errors")
#: A worker's file is closed (and another begun) past this size, so that read ones can be removed.
ROTATE_BYTES = 64 << 20
#: At most this much of one file is read per transaction: the chain's lock is not held for long.
READ_BYTES = 4 << 20
_SUFFIX = ".facts"
#: Facts begin with the time they were taken (`events.facts`): the chain's entry is dated by it.
_RECORDED = b'{"recorded":"'
_STAMP = len("2026-12-01T00:00:00.000000")

audit_journal = Table(
    "audit_journal",
    MetaData(),
    Column("name", String(200), primary_key=True),
    Column("offset", BigInteger, nullable=False),
    schema="audit",
    comment="How far the chain has read each worker's journal file: the bytes before it are chained.",
)


#: The offsets read and recorded by the audit writer's every transaction, as SQL text: built with SQLAlchemy
#: each time they cost ~0.4 ms a transaction (~4 us an event at ~100 events a transaction). Run through
#: `exec_driver_sql`, so a failure is SQLAlchemy's error, which the request path answers 503, not 500.
_OFFSETS = 'SELECT name, "offset" FROM audit.audit_journal'
_ADVANCE = (
    'INSERT INTO audit.audit_journal (name, "offset") VALUES (?, ?) '
    'ON CONFLICT (name) DO UPDATE SET "offset" = excluded."offset"'
)


def journals_of(chain_file: Path) -> Path:
    return Path(f"{chain_file}-journals")


def prepare(engine: Engine) -> None:
    """The table of offsets, in the chain's file (which only SQLite has)."""
    with engine.begin() as conn:
        audit_journal.create(conn, checkfirst=True)


class Journal:
    """This process's journal file, opened at the first append (and again after a fork or past
    ROTATE_BYTES); appends only, from any thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd: int | None = None
        self._pid = 0
        self._size = 0
        self._guard = threading.Lock()

    def append(self, facts: bytes) -> None:
        """`facts` as one line, written before this returns; OSError if not whole (the file is then closed,
        its torn end left to the reader: see `unread`)."""
        line = facts + b"\n"
        with self._guard:
            if self._fd is None or self._pid != os.getpid() or self._size > ROTATE_BYTES:
                self._open()
            assert self._fd is not None
            written = os.write(self._fd, line)
            self._size += written
            if written != len(line):
                self.close_unguarded()
                raise OSError(f"the audit journal took {written} of {len(line)} bytes")

    def _open(self) -> None:
        self.close_unguarded()
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{time.time_ns()}"
        fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # before a reader can see it, else it could find it free and remove it
        os.rename(self.directory / name, self.directory / f"{name}{_SUFFIX}")
        self._fd, self._pid, self._size = fd, os.getpid(), 0

    def close(self) -> None:
        with self._guard:
            self.close_unguarded()

    def close_unguarded(self) -> None:
        if self._fd is not None and self._pid == os.getpid():  # a forked child leaves its parent's file be
            os.close(self._fd)  # and its lock: the file may be removed once read
        self._fd = None


def unread(conn: Connection, directory: Path) -> tuple[list[tuple[datetime, bytes]], dict[str, int]]:
    """In `conn`'s transaction on the chain (which holds its lock): the facts the journals hold past what was
    chained, file by file, each file's lines in the order written, with how far each file is then read.
    Files read to their end in an earlier transaction, whose worker is gone, are removed here."""
    if not directory.is_dir():
        return [], {}
    t = audit_journal.c
    offsets: dict[str, int] = dict(conn.exec_driver_sql(_OFFSETS).all())
    found: list[tuple[datetime, bytes]] = []
    reached: dict[str, int] = {}
    for path in sorted(directory.glob(f"*{_SUFFIX}")):
        done = offsets.pop(path.name, 0)
        with open(path, "rb") as file:
            file.seek(done)
            data = file.read(READ_BYTES)
            if len(data) == READ_BYTES and b"\n" not in data:  # one line longer than that: read it whole
                data += file.readline()
        end = data.rfind(b"\n") + 1
        if end == 0:
            if _free(path):  # its worker is gone: nothing more comes
                if data:
                    log.error("%s ends with %d bytes of a torn line: not chained", path, len(data))
                path.unlink()
                conn.execute(delete(audit_journal).where(t.name == path.name))
            continue
        for line in data[:end].splitlines():
            recorded = _recorded(line)
            if recorded is None:
                log.error("%s holds a line that is no AuditEvent's facts: not chained: %r", path, line[:200])
            else:
                found.append((recorded, line))
        reached[path.name] = done + end
    if offsets:  # their files were removed
        conn.execute(delete(audit_journal).where(t.name.in_(offsets)))
    return found, reached


def advance(conn: Connection, reached: dict[str, int]) -> None:
    """Record how far each file was read (in the transaction that chained what was read)."""
    if reached:
        conn.exec_driver_sql(_ADVANCE, list(reached.items()))


def pending(conn: Connection, directory: Path) -> bool:
    """Whether any journal holds more than was chained (a read, for the event loop: a stat per file)."""
    if not directory.is_dir():
        return False
    sizes = {}
    for path in directory.glob(f"*{_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile, by another worker's reader
            sizes[path.name] = path.stat().st_size
    if not sizes:
        return False
    offsets = dict(conn.exec_driver_sql(_OFFSETS).all())
    return any(size > offsets.get(name, 0) for name, size in sizes.items())


def _recorded(line: bytes) -> datetime | None:
    if not line.startswith(_RECORDED):
        return None
    try:
        return datetime.fromisoformat(line[len(_RECORDED) : len(_RECORDED) + _STAMP].decode())
    except ValueError:
        return None


def _free(path: Path) -> bool:
    """Whether no worker holds the file's lock (any more): taken and let go at once."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return True

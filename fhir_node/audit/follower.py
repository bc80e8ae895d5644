"""On SQLite, one process beside the workers chains what their journals hold (`fhir-node audit follow`, which
`fhir-node serve` starts): a worker's event loop then shares its interpreter with no writer thread, whose
chaining (~17-21 µs an event) and hand-overs of the interpreter's lock (0.2-0.7 a search) it paid for; with two
workers, two such threads each read every journal. Workers still chain the journals themselves past the lag
(their requests then wait for it, as without a follower), and a write's staged AuditEvent is chained by its
worker's thread or by the follower, whichever comes first. Nothing is lost when the follower stops or dies:
the journals hold the facts, and whoever chains next (a worker past the lag, a reader of AuditEvents, the next
follower) chains them."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

from fhir_node.audit import chain
from fhir_node.audit.trail import INDEX_BACKOFF, Writer, index_batch
from fhir_node.store import audit_journal
from fhir_node.store.database import Database

error_log = logging.getLogger("fhir_node.errors")
#: Seconds before a follower that exited is started again.
RESTART_WAIT = 1.0
#: Seconds between the follower's transactions. Each has a fixed cost (the journals listed, opened and read
#: from their offsets, the chain's head, a commit): every 0.1 s (a worker's JOURNAL_LINGER) the follower cost
#: 28-33 µs of CPU a search, every 0.5 s 19-21 (one worker, the compare mix, 4 pairs alternated, 2026-12-02).
#: Nothing waits for it: the facts are durable in the journals, and a reader of AuditEvents chains them first.
PAUSE = 0.5
#: The command `beside` runs.
COMMAND = (sys.executable, "-m", "fhir_node", "audit", "follow", "--until-stdin-closes")


def follow(db: Database, stopped: threading.Event) -> None:
    """Until `stopped`: every `PAUSE` seconds what the journals hold, chained in one transaction;
    once nothing came for `Writer.IDLE` seconds, the chained events indexed a batch at a time (as a worker's
    writer thread does). Then, stopped, what came meanwhile chained."""
    last = time.monotonic()
    behind = True  # an earlier run may have left some to index
    pause = PAUSE
    while not stopped.wait(pause):
        pause = PAUSE
        try:
            if _pending(db):
                chain.settle(db)
                last, behind = time.monotonic(), True
            elif behind and time.monotonic() - last >= Writer.IDLE:
                more = index_batch(db)
                behind = more is not False
                if more is None:  # another process held the database's lock
                    pause = INDEX_BACKOFF
                elif more:  # the next batch at once
                    pause = 0
        except Exception as exc:
            error_log.warning("chaining the audit journals failed, retried: %s", exc)
    try:
        chain.settle(db)
    except Exception as exc:
        error_log.warning("the audit journals stay unchained until the next follower or worker: %s", exc)


def _pending(db: Database) -> bool:
    """Whether a journal holds facts not chained yet: a read, which takes no lock."""
    assert db.journals is not None
    with db.read() as conn:
        return audit_journal.pending(conn, db.journals)


@contextlib.contextmanager
def beside() -> Iterator[None]:
    """`fhir-node audit follow` running while the block lasts (started again `RESTART_WAIT` seconds after it
    exits before), and the workers this process starts told so (`FHIR_NODE_AUDIT_FOLLOWER`). Its standard
    input is a pipe from this process: closed at the block's end, or when this process dies, the follower
    chains what is left and exits."""
    os.environ["FHIR_NODE_AUDIT_FOLLOWER"] = "true"
    keeper = _Keeper()
    try:
        yield
    finally:
        keeper.stop()


class _Keeper:
    """One follower process at a time, started again when it exits before `stop`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopping = False
        self._process = self._start()
        self._thread = threading.Thread(target=self._keep, name="audit-follower", daemon=True)
        self._thread.start()

    @staticmethod
    def _start() -> subprocess.Popen[bytes]:
        # A session of its own: a Ctrl-C to the terminal stops the workers first; the follower then chains
        # what they journaled last when its standard input closes.
        return subprocess.Popen(COMMAND, stdin=subprocess.PIPE, start_new_session=True)

    def _keep(self) -> None:
        while True:
            code = self._process.wait()
            with self._lock:
                if self._stopping:
                    return
            error_log.error("the audit follower exited (status %s); starting it again", code)
            time.sleep(RESTART_WAIT)
            with self._lock:
                if self._stopping:
                    return
                self._process = self._start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            process = self._process
        assert process.stdin is not None
        with contextlib.suppress(OSError):
            process.stdin.close()
        try:
            process.wait(Writer.CLOSE_WAIT)
        except subprocess.TimeoutExpired:
            error_log.warning(
                "the audit follower did not finish within %s s; what it holds stays journaled", Writer.CLOSE_WAIT
            )
            process.kill()
            process.wait()

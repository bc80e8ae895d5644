"""What a request that failed without an answer of its own tells its client. Most such failures are
not outages: a client that left (499), a body that never came (408), a query the statement timeout
stopped or the database found too complex (400 too-costly: the client's doing, and the database is
fine), a write lock held past the wait (503, retry). Only a lost database is logged as one."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.requests import ClientDisconnect

#: nginx's code for "the client closed the connection before the answer": only ever logged and audited.
CLIENT_GONE = 499
#: SQLite's refusals of a statement too big or too deep to prepare or run (SQLITE_ERROR, SQLITE_TOOBIG).
_TOO_COMPLEX = re.compile(r"too many|too large|too big|too deep|stack overflow|string or blob", re.IGNORECASE)


_RETRY = ((b"retry-after", b"5"),)


class ClientGone(Exception):
    """The client went away while its query ran; the query was cancelled."""


class BodyTimeout(Exception):
    """The request body did not arrive within FHIR_NODE_BODY_TIMEOUT_SECONDS."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The request body did not arrive within {seconds:g} s")


@dataclass(frozen=True)
class Failure:
    """The answer: status, OperationOutcome issue code and text (none for 499), headers, whether it is an
    outage."""

    status: int
    code: str = ""
    text: str = ""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    outage: bool = False


def classify(exc: Exception) -> Failure | None:
    """The answer `exc` deserves, or None for a bug of ours (a 500)."""
    if isinstance(exc, ClientGone | ClientDisconnect):
        return Failure(CLIENT_GONE)
    if isinstance(exc, BodyTimeout):
        return Failure(408, "timeout", str(exc), ((b"connection", b"close"),))  # the rest of the body is not read
    if not isinstance(exc, DBAPIError):
        return None
    sqlstate = getattr(exc.orig, "sqlstate", None)
    sqlite_error = getattr(exc.orig, "sqlite_errorname", None)
    message = str(exc.orig)
    if sqlstate == "57014" or sqlite_error == "SQLITE_INTERRUPT":
        text = "The request ran longer than this node's statement timeout and was stopped; narrow the search"
        return Failure(400, "too-costly", text)
    if sqlstate == "55P03" or sqlite_error in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return Failure(503, "transient", "Other writes held the write lock too long; retry later", _RETRY)
    if sqlite_error in ("SQLITE_ERROR", "SQLITE_TOOBIG") and _TOO_COMPLEX.search(message):
        return Failure(400, "too-costly", "The request is too complex for the database; simplify it")
    if isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated:
        return Failure(503, "transient", "The database is unavailable; retry later", outage=True)
    return None


def status_of(exc: Exception) -> int:
    """The status a failed request is audited and logged with."""
    failure = classify(exc)
    return failure.status if failure else 500

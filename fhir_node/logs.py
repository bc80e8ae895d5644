"""Structured logging: one JSON object per line on stderr, so log shippers need no parsing rules."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import logging.config
import sys
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

import orjson

access_log = logging.getLogger("fhir_node.access")


def _line(created: float, level: str, logger: str, message: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "ts": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": logger,
        "message": message,
        **fields,
    }


class JSONFormatter(logging.Formatter):
    """ts, level, logger, message, plus the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        out = _line(record.created, record.levelname, record.name, record.getMessage(), getattr(record, "fields", {}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


#: Access lines not written yet: those of the requests that ended since the last write.
_unwritten: deque[str] = deque()
#: Held while lines taken from `_unwritten` are written: a flush that finds none left knows they are out.
_writing = threading.Lock()
#: How long an access line waits on an event loop for the lines after it, to leave with them in one write.
FLUSH_SECONDS = 0.05
#: The event loop on which a write of the waiting lines is due (None: none is). A loop that ended before its
#: write (a test's client) leaves its lines to the next loop's.
_due_on: asyncio.AbstractEventLoop | None = None


def access(fields: dict[str, Any]) -> None:
    """The access log's line for one request (`fields`), as JSONFormatter writes a record of `access_log` at
    INFO, written straight to stderr when that level is on: a LogRecord and the handler's chain cost ~20 of
    the ~28 us a line took, ~5 % of a search's CPU in the server (measured). On an event loop, the lines of
    the requests that end within FLUSH_SECONDS of the first are written together (`flush_access`): a write
    per line, or per turn of the loop (one or two requests at 4 connections), was 2.5-5 % of a search's CPU
    in the server (paired wrk slices)."""
    global _due_on
    if access_log.isEnabledFor(logging.INFO) and sys.stderr is not None:
        _unwritten.append(orjson.dumps(_line(time.time(), "INFO", access_log.name, "request", fields)).decode())
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            flush_access()
            return
        if _due_on is not loop:  # no write due here yet: it follows shortly
            _due_on = loop
            loop.call_later(FLUSH_SECONDS, flush_access)


@atexit.register
def flush_access() -> None:
    """Write the access lines not written yet (each once, whichever thread flushes), as one write."""
    global _due_on
    with _writing:
        _due_on = None
        lines = []
        with contextlib.suppress(IndexError):
            while True:
                lines.append(_unwritten.popleft())
        if lines and sys.stderr is not None:
            with contextlib.suppress(OSError, ValueError):  # stderr closed or its reader gone: the answer stands
                sys.stderr.write("\n".join(lines) + "\n")


def config(level: str) -> dict[str, Any]:
    """The node's and uvicorn's logs through the JSON formatter, as a `logging.config.dictConfig` dict: uvicorn
    applies it in each worker process it starts (`--workers 2`), whose logs, access log included, went
    nowhere else (measured: no access line at all with two workers)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JSONFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.error")},
    }


def configure(level: str) -> None:
    """`config` applied in this process."""
    logging.config.dictConfig(config(level))

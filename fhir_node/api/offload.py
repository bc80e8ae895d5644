"""Work that may run long leaves the event loop or waits without holding it: searches and history (on SQLite,
those past their budget on the loop: see `routes.reading`) and big request bodies run in a worker thread,
PostgreSQL reads await the network on the loop, so `/health` and cheap requests keep answering; and when
the client goes away first, the statements the work runs are cancelled rather than left to finish for
nobody."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request

from fhir_node.api.failures import ClientGone
from fhir_node.store.database import Cancel, cancelling

T = TypeVar("T")


async def watched(request: Request, work: Callable[[], Awaitable[T]]) -> T:
    """`work()` (a worker thread's or the event loop's), awaited in this task; ClientGone, after cancelling
    its statements, if the client left first."""
    cancel = Cancel()
    token = cancelling.set(cancel)  # the work runs in this context (a thread gets a copy)
    task = asyncio.current_task()
    assert task is not None
    gone = asyncio.ensure_future(_stop_when_gone(request, cancel, task))
    try:
        return await work()
    except asyncio.CancelledError:
        if not cancel.cancelled:
            raise
        task.uncancel()
        raise ClientGone from None
    finally:
        gone.cancel()
        cancelling.reset(token)


async def _stop_when_gone(request: Request, cancel: Cancel, task: asyncio.Task[Any]) -> None:
    """Once the client disconnects (called after the request body was read): its statements cancelled (in a
    thread: a PostgreSQL cancel request, or SQLite's progress handler stops), and the task awaiting them
    (on the loop, psycopg cancels the statement it awaits; a thread cannot be stopped, only no longer
    awaited)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    cancel.fire()
    task.cancel()

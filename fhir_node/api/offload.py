"""Work that may run long leaves the event loop: searches and history (on SQLite, those past their budget on
the loop: see `routes.reading`), and big request bodies, run in a worker thread, so `/health` and cheap
requests keep answering; and when the client goes away first, the statements the work runs are
cancelled rather than left to finish for nobody."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from fhir_node.api.failures import ClientGone
from fhir_node.store.database import Cancel, cancelling

T = TypeVar("T")


async def off_loop(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a worker thread; ClientGone (after cancelling its statements) if the client left."""
    cancel = Cancel()
    token = cancelling.set(cancel)
    try:
        work = asyncio.ensure_future(run_in_threadpool(fn, *args))  # the task copies the context: `cancel`
    finally:
        cancelling.reset(token)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if work.done():
        return work.result()
    cancel.fire()
    with contextlib.suppress(Exception):  # a thread cannot be stopped: wait for it to notice
        await work
    raise ClientGone


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (called once the request body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass

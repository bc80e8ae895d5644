"""create_app(settings): the ASGI application, wired from one Node."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fhir_node import memory
from fhir_node.api.edge import Edge
from fhir_node.api.errors import HANDLERS
from fhir_node.api.guard import Guard
from fhir_node.api.middleware import RequestContext
from fhir_node.api.routes import ROUTES
from fhir_node.node import Node
from fhir_node.operations.export_runner import ExportRunner
from fhir_node.settings import Settings
from fhir_node.web import pages


async def health(request: Request) -> Response:
    """For load balancers: 200 when the database answers, 503 otherwise."""
    node: Node = request.app.state.node
    up = node.db.ping()
    body = orjson.dumps({"status": "ok" if up else "unavailable", "database": "up" if up else "down"})
    return Response(body, 200 if up else 503, media_type="application/json")


def create_app(settings: Settings | None = None, node: Node | None = None) -> Starlette:
    """The node's ASGI app; builds (and migrates) the Node unless one is given."""
    settings = settings or (node.settings if node else Settings())
    node = node or Node.from_settings(settings)

    runner = ExportRunner(node)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # Export jobs: this worker's share of them (unless it is told to leave them to others).
        task = asyncio.create_task(runner.run()) if settings.export_runner else None
        memory.collect_less()
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(node.audit_writer.close)
        await node.db.dispose_loop()
        node.db.dispose()

    app = Starlette(
        routes=[Route("/health", health, methods=["GET"]), *ROUTES, *pages.ROUTES],
        middleware=[
            Middleware(RequestContext),
            Middleware(Edge, settings=settings),
            Middleware(Guard, node=node),
        ],
        exception_handlers={**HANDLERS, HTTPException: pages.not_found_or_fhir},  # type: ignore[dict-item]
        lifespan=lifespan,
    )
    app.state.node = node
    app.state.export_runner = runner
    return app

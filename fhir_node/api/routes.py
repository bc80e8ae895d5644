"""The FHIR REST endpoints. Each one negotiates, runs one interaction (in a worker thread, except reads,
which run on the event loop: SQLite's within a budget, PostgreSQL's awaiting the server; see `reading`), and
answers."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlencode

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from fhir_node.api.middleware import fhir_base
from fhir_node.api.negotiate import FHIR_JSON, HTTP_PARAMETERS, JSON_PATCH, negotiate, prefer, query_pairs, read_body
from fhir_node.api.offload import watched
from fhir_node.api.responses import fhir_response, http_date, not_modified, version_headers, written_response
from fhir_node.conformance import smart
from fhir_node.conformance.capability import capability_statement
from fhir_node.interactions import bundle, history, patch, read, search, write
from fhir_node.interactions.incoming import parse_body, parse_query
from fhir_node.node import Node
from fhir_node.operations import deceased, export, ssin_change, terminology
from fhir_node.operations.validate import validate_operation
from fhir_node.outcome import FHIRError, Issue, error, fail, operation_outcome
from fhir_node.registry import kind, require_method
from fhir_node.store.database import OverBudget

Endpoint = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")
#: Bodies up to this size parse in well under a millisecond: on the event loop.
_PARSE_ON_LOOP_BYTES = 64 * 1024
#: Seconds a SQLite search or history may hold the event loop before it moves to a worker thread.
LOOP_BUDGET = 0.005


async def reading(request: Request, fn: Callable[..., T], *args: Any, by_id: bool = False) -> T:
    """Run a read interaction on the event loop. On SQLite a read by id takes no lock and lasts less than
    the hand-off to a thread would, and a search or history gets `LOOP_BUDGET` seconds there before it is
    run again in a thread (`Database.on_loop`). PostgreSQL reads await the network there, holding the loop
    only for their Python (`Database.awaiting`). A search or history is cancelled if the client leaves."""
    node = node_of(request)
    if node.db.is_sqlite:
        if by_id:
            return fn(node, *args)
        with contextlib.suppress(OverBudget), node.db.on_loop(LOOP_BUDGET):
            return fn(node, *args)
        return await watched(request, lambda: run_in_threadpool(fn, node, *args))
    return await watched(request, lambda: node.db.awaiting(fn, node, *args))


async def resource_body(request: Request, form: bool = False) -> Any:
    """The request's JSON body, parsed."""
    settings = node_of(request).settings
    return await parsed(await read_body(request, settings.max_body_bytes, form=form), settings.max_json_depth)


async def parsed(raw: bytes, max_depth: int) -> Any:
    """`parse_body`, in a worker thread when `raw` is big enough to hold the event loop up."""
    if len(raw) > _PARSE_ON_LOOP_BYTES:
        return await run_in_threadpool(parse_body, raw, max_depth)
    return parse_body(raw, max_depth)


def node_of(request: Request) -> Node:
    return request.app.state.node


def base_of(request: Request) -> str:
    """The FHIR base URL for links: the configured public one, else the one the client used."""
    return fhir_base(request.scope, node_of(request).settings.base_url)


def _query(request: Request) -> list[tuple[str, str]]:
    return [(k, v) for k, v in query_pairs(request) if k not in HTTP_PARAMETERS]


async def metadata(request: Request) -> Response:
    neg = negotiate(request)
    body = capability_statement(node_of(request).settings, base_of(request))
    return fhir_response(neg, orjson.dumps(body))


async def smart_configuration(request: Request) -> Response:
    body = smart.smart_configuration(node_of(request).settings)
    if body is None:
        raise fail(404, "not-found", "This node takes no tokens (FHIR_NODE_AUTH=none)")
    return Response(orjson.dumps(body), media_type="application/json")


async def read_instance(request: Request) -> Response:
    neg = negotiate(request)
    p = request.path_params
    v = await reading(request, read.read, p["type"], p["id"], by_id=True)
    headers = version_headers(v, base_of(request))
    if not_modified(request, v):
        return Response(None, 304, headers)
    return fhir_response(neg, v.content or b"", 200, headers)


async def vread_instance(request: Request) -> Response:
    neg = negotiate(request)
    p = request.path_params
    v = await reading(request, read.vread, p["type"], p["id"], p["vid"], by_id=True)
    return fhir_response(neg, v.content or b"", 200, version_headers(v, base_of(request)))


async def create(request: Request) -> Response:
    """POST [type]. Criteria in the URL (`POST /Patient?identifier=...`, what fhirpy's get_or_create sends)
    make it a conditional create, as If-None-Exist does; a URL parameter is never ignored silently."""
    neg = negotiate(request)
    node = node_of(request)
    body = await resource_body(request)
    res_type = request.path_params["type"]
    criteria = request.headers.get("if-none-exist")
    in_url = urlencode(_query(request))
    if in_url:
        if criteria is not None:
            raise fail(400, "invalid", "Give conditional-create criteria once: in If-None-Exist or in the URL")
        criteria = in_url
    done = await run_in_threadpool(write.create, node, res_type, body, criteria)
    message = "Created" if done.status == 201 else "An existing resource matched the criteria; nothing created"
    return written_response(neg, done.version, done.status, base_of(request), message)


async def update(request: Request) -> Response:
    neg = negotiate(request)
    node = node_of(request)
    body = await resource_body(request)
    p = request.path_params
    done = await run_in_threadpool(write.update, node, p["type"], p["id"], body, request.headers.get("if-match"))
    message = "Created" if done.status == 201 else "Updated"
    return written_response(neg, done.version, done.status, base_of(request), message)


async def delete(request: Request) -> Response:
    negotiate(request)
    p = request.path_params
    v = await run_in_threadpool(write.delete, node_of(request), p["type"], p["id"], request.headers.get("if-match"))
    return Response(None, 204, {"ETag": v.etag} if v else None)


async def search_endpoint(request: Request) -> Response:
    """GET [type]?..., POST [type]/_search (form body joins the URL's parameters), GET [base]?_type=..."""
    neg = negotiate(request)
    params = _query(request)
    if request.method == "POST":
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        if ctype != "application/x-www-form-urlencoded":
            raise fail(415, "not-supported", "POST _search takes an application/x-www-form-urlencoded body")
        raw = await read_body(request, node_of(request).settings.max_body_bytes, form=True)
        params += [(k, v) for k, v in parse_query(raw) if k not in HTTP_PARAMETERS]
    lenient = prefer(request, "handling") == "lenient"
    body = await reading(request, search.search, base_of(request), request.path_params.get("type"), params, lenient)
    return fhir_response(neg, body)


async def conditional(request: Request) -> Response:
    """PUT and DELETE on [type]?criteria; without criteria both are refused."""
    neg = negotiate(request)
    node = node_of(request)
    res_type = request.path_params["type"]
    query = urlencode(_query(request))
    if not query:
        raise fail(400, "invalid", f"{request.method} on {res_type} needs search criteria (or an id in the URL)")
    if_match = request.headers.get("if-match")
    if request.method == "DELETE":
        v = await run_in_threadpool(write.conditional_delete, node, res_type, query, if_match)
        return Response(None, 204, {"ETag": v.etag} if v else None)
    body = await resource_body(request)
    done = await run_in_threadpool(write.conditional_update, node, res_type, query, body, if_match)
    return written_response(
        neg, done.version, done.status, base_of(request), "Created" if done.status == 201 else "Updated"
    )


async def type_level(request: Request) -> Response:
    """[type]: GET searches, POST creates, PUT and DELETE are conditional."""
    require_method(kind(request.path_params["type"]), request.method, "type")
    handler = {"GET": search_endpoint, "HEAD": search_endpoint, "POST": create}.get(request.method, conditional)
    return await handler(request)


async def patch_instance(request: Request) -> Response:
    """PATCH [type]/[id] with a JSON Patch document."""
    neg = negotiate(request)
    node = node_of(request)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != JSON_PATCH:
        raise fail(415, "not-supported", f"PATCH takes {JSON_PATCH}, not '{ctype or '(none)'}'")
    operations = await resource_body(request, form=True)
    p = request.path_params
    done = await run_in_threadpool(patch.patch, node, p["type"], p["id"], operations, request.headers.get("if-match"))
    return written_response(neg, done.version, done.status, base_of(request), "Patched")


async def instance(request: Request) -> Response:
    """GET, PUT, PATCH and DELETE on [type]/[id]."""
    require_method(kind(request.path_params["type"]), request.method, "instance")
    handler = {
        "GET": read_instance,
        "HEAD": read_instance,
        "PUT": update,
        "PATCH": patch_instance,
        "DELETE": delete,
    }[request.method]
    return await handler(request)


async def system_level(request: Request) -> Response:
    """[base]: GET searches across types, POST processes a transaction or batch Bundle."""
    if request.method != "POST":
        return await search_endpoint(request)
    neg = negotiate(request)
    node = node_of(request)
    body = await resource_body(request)
    representation = prefer(request, "return") == "representation"
    out = await run_in_threadpool(bundle.process, node, base_of(request), body, representation)
    return fhir_response(neg, out)


async def validate_endpoint(request: Request) -> Response:
    """POST [type]/$validate, [type]/[id]/$validate: 200 with the OperationOutcome, valid or not.
    A body-less POST (mode=delete in the URL) needs no Content-Type."""
    neg = negotiate(request)
    node = node_of(request)
    raw = await read_body(request, node.settings.max_body_bytes, form="content-type" not in request.headers)
    body = await parsed(raw, node.settings.max_json_depth) if raw else None
    p = request.path_params
    outcome = await run_in_threadpool(validate_operation, node, p["type"], p.get("id"), _query(request), body)
    return fhir_response(neg, orjson.dumps(outcome))


def operation_endpoint(operation: Callable[..., dict[str, Any]]) -> Endpoint:
    """GET, or POST with a Parameters body, of an operation called as `operation(node, query, body, **path)`."""

    async def endpoint(request: Request) -> Response:
        neg = negotiate(request)
        node = node_of(request)
        raw = await read_body(request, node.settings.max_body_bytes) if request.method == "POST" else b""
        body = await parsed(raw, node.settings.max_json_depth) if raw else None
        out = await run_in_threadpool(operation, node, _query(request), body, **request.path_params)
        return fhir_response(neg, orjson.dumps(out))

    return endpoint


def export_endpoint(level: str) -> Endpoint:
    """Bulk Data kick-off (GET [base]/$export, Patient/$export, Group/[id]/$export): 202 with the job's
    status URL in Content-Location; `Prefer: respond-async` is required, as the IG says."""

    async def endpoint(request: Request) -> Response:
        neg = negotiate(request)
        if prefer(request, "respond-async") is None:
            raise fail(400, "invalid", "$export runs asynchronously: send 'Prefer: respond-async'")
        node = node_of(request)
        group = request.path_params.get("id")
        url = (
            base_of(request)
            + request.url.path.removeprefix("/fhir")
            + (f"?{request.url.query}" if request.url.query else "")
        )
        job_id = await run_in_threadpool(export.kick_off, node, url, _query(request), level, group)
        request.app.state.export_runner.wake()
        status_url = f"{base_of(request)}/$export-status/{job_id}"
        body = operation_outcome([Issue("information", "informational", f"Export accepted; poll {status_url}")])
        return fhir_response(neg, orjson.dumps(body), 202, {"Content-Location": status_url})

    return endpoint


async def export_status(request: Request) -> Response:
    """The job's status URL. GET: 202 with X-Progress and Retry-After while it runs, 200 with the manifest
    once complete, 500 with an OperationOutcome if it failed. DELETE: cancels it (202)."""
    node = node_of(request)
    job_id = request.path_params["job"]
    if request.method == "DELETE":
        await run_in_threadpool(export.cancel, node, job_id)
        body = operation_outcome([Issue("information", "informational", "Export cancelled; its files are deleted")])
        return Response(orjson.dumps(body), 202, media_type=FHIR_JSON)
    found = await reading(request, export.status, job_id, base_of(request), by_id=True)
    if found.state == export.FAILED:
        body = operation_outcome([Issue("error", "exception", found.error or "The export failed")])
        return Response(orjson.dumps(body), 500, media_type=FHIR_JSON)
    if found.manifest is None:
        headers = {"X-Progress": f"{found.progress}% ({found.state})", "Retry-After": "2"}
        return Response(None, 202, headers)
    headers = {"Expires": http_date(found.expires)} if found.expires else {}
    return Response(orjson.dumps(found.manifest), 200, headers, media_type="application/json")


async def export_file(request: Request) -> Response:
    """An output file of a completed job (NDJSON), for the job's owner, streamed segment by segment."""
    p = request.path_params
    segments = await reading(request, export.file_segments, p["job"], p["name"], by_id=True)
    return StreamingResponse(segments, media_type=export.NDJSON)


async def history_endpoint(request: Request) -> Response:
    neg = negotiate(request)
    p = request.path_params
    body = await reading(request, history.history, base_of(request), _query(request), p.get("type"), p.get("id"))
    return fhir_response(neg, body)


class Segment(Convertor[str]):
    """A path segment of one shape (an operation name such as `$expand`, a type name, an id), so a route
    matches only segments of its own shape: `$expand` is not read as a type or an id."""

    def __init__(self, regex: str) -> None:
        self.regex = regex

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("operation", Segment(r"\$[^/]+"))
register_url_convertor("type_name", Segment(r"[A-Z][A-Za-z]+"))
register_url_convertor("fhir_id", Segment(r"[A-Za-z0-9\-.]{1,64}"))


async def unknown_operation(request: Request) -> Response:
    """Any operation the routes above do not serve, at system, type or instance level: a 404 naming it
    (not "'$expand' is not a valid id"). The CapabilityStatement lists the ones the node has."""
    negotiate(request)
    p = request.path_params
    if "type" in p:
        kind(p["type"])
    where = f" on {p['type']}" if "type" in p else " at the system level"
    where += " instances" if "id" in p else ""
    raise fail(404, "not-supported", f"Unknown operation '{p['name']}'{where}; GET /metadata lists the operations")


def only(handler: Endpoint, *allowed: str) -> Endpoint:
    """An endpoint that answers other methods with a FHIR 405, so they never fall through to a broader
    route (PUT /fhir/metadata must not reach PUT /fhir/{type})."""
    allow = ", ".join(sorted({*allowed, "HEAD"} if "GET" in allowed else set(allowed)))

    async def endpoint(request: Request) -> Response:
        if request.method not in allowed and not (request.method == "HEAD" and "GET" in allowed):
            issue = error("not-supported", f"{request.method} is not allowed on {request.url.path}")
            raise FHIRError(405, [issue], {"Allow": allow})
        return await handler(request)

    return endpoint


_ALL = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

ROUTES = [
    # Starlette tries routes in order: the most asked come first. Only a type name, and a valid id, match
    # them, which no route below them takes; the general routes at the end answer the rest (an unknown type,
    # an invalid id) with their errors.
    Route("/fhir/{type:type_name}", type_level, methods=_ALL),
    Route("/fhir/{type:type_name}/{id:fhir_id}", instance, methods=_ALL),
    Route("/fhir/metadata", only(metadata, "GET"), methods=_ALL),
    Route("/fhir/.well-known/smart-configuration", only(smart_configuration, "GET"), methods=_ALL),
    Route("/fhir/_history", only(history_endpoint, "GET"), methods=_ALL),
    Route("/fhir/{type}/_history", only(history_endpoint, "GET"), methods=_ALL),
    Route("/fhir/{type}/{id}/_history/{vid}", only(vread_instance, "GET"), methods=_ALL),
    Route("/fhir/{type}/{id}/_history", only(history_endpoint, "GET"), methods=_ALL),
    Route("/fhir/{type}/_search", only(search_endpoint, "POST"), methods=_ALL),
    Route("/fhir/$export", only(export_endpoint("system"), "GET"), methods=_ALL),
    Route("/fhir/Patient/$export", only(export_endpoint("Patient"), "GET"), methods=_ALL),
    Route("/fhir/Group/{id}/$export", only(export_endpoint("Group"), "GET"), methods=_ALL),
    Route("/fhir/$export-status/{job}", only(export_status, "GET", "DELETE"), methods=_ALL),
    Route("/fhir/$export-file/{job}/{name}", only(export_file, "GET"), methods=_ALL),
    Route("/fhir/{type}/$validate", only(validate_endpoint, "POST"), methods=_ALL),
    Route("/fhir/{type}/{id}/$validate", only(validate_endpoint, "POST"), methods=_ALL),
    *(
        Route(path, only(operation_endpoint(operation), "GET", "POST"), methods=_ALL)
        for path, operation in (
            ("/fhir/ValueSet/$expand", terminology.expand),
            ("/fhir/ValueSet/{res_id}/$expand", terminology.expand),
            ("/fhir/ValueSet/$validate-code", terminology.validate_code),
            ("/fhir/ValueSet/{res_id}/$validate-code", terminology.validate_code),
            ("/fhir/CodeSystem/$lookup", terminology.lookup),
        )
    ),
    Route("/fhir/Patient/{res_id}/$deceased", only(operation_endpoint(deceased.deceased), "POST"), methods=_ALL),
    Route(
        "/fhir/Patient/{res_id}/$ssin-change", only(operation_endpoint(ssin_change.ssin_change), "POST"), methods=_ALL
    ),
    Route("/fhir/{name:operation}", unknown_operation, methods=_ALL),
    Route("/fhir/{type}/{name:operation}", unknown_operation, methods=_ALL),
    Route("/fhir/{type}/{id}/{name:operation}", unknown_operation, methods=_ALL),
    Route("/fhir/{type}/{id}", instance, methods=_ALL),
    Route("/fhir/{type}", type_level, methods=_ALL),
    Route("/fhir", only(system_level, "GET", "POST"), methods=_ALL),
]

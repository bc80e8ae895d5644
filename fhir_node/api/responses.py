"""Turning interaction results into HTTP responses: headers from the version, Prefer honoured."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

import orjson
from starlette.requests import Request
from starlette.responses import Response

from fhir_node.api.negotiate import FHIR_JSON, Negotiated
from fhir_node.outcome import Issue, operation_outcome
from fhir_node.rules.pseudonym import shown
from fhir_node.store.repository import Version


def http_date(ts: datetime) -> str:
    return format_datetime(ts.replace(tzinfo=UTC), usegmt=True)


def version_headers(v: Version, base: str, location: bool = False) -> dict[str, str]:
    headers = {"ETag": v.etag, "Last-Modified": http_date(v.last_updated)}
    if location:
        headers["Location"] = f"{base}/{v.res_type}/{v.res_id}/_history/{v.version_id}"
    return headers


def fhir_response(neg: Negotiated, body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Every answer holding resources: their SSINs as the caller may see them (`rules.pseudonym`)."""
    return Response(neg.render(shown(body)), status, headers, media_type=neg.media_type)


def outcome_response(issues: list[Issue], status: int, headers: dict[str, str] | None = None) -> Response:
    """An OperationOutcome answer; used for errors, where negotiation may itself have failed."""
    return Response(orjson.dumps(operation_outcome(issues)), status, headers, media_type=FHIR_JSON)


def written_response(neg: Negotiated, v: Version, status: int, base: str, message: str) -> Response:
    """Answer to create/update per Prefer: the resource, nothing, or an OperationOutcome saying what happened."""
    headers = version_headers(v, base, location=status == 201 or v.version_id == 1)
    if neg.prefer_return == "minimal" or v.content is None:
        return Response(None, status, headers)
    if neg.prefer_return == "OperationOutcome":
        oo = orjson.dumps(operation_outcome([Issue("information", "informational", message)]))
        return fhir_response(neg, oo, status, headers)
    return fhir_response(neg, v.content, status, headers)


def not_modified(request: Request, v: Version) -> bool:
    """Conditional read: If-None-Match on the ETag, else If-Modified-Since on lastUpdated (seconds)."""
    inm = request.headers.get("if-none-match")
    if inm is not None:
        return any(tag.strip() in (v.etag, f'"{v.version_id}"', "*") for tag in inm.split(","))
    ims = request.headers.get("if-modified-since")
    if ims is None:
        return False
    try:
        since = parsedate_to_datetime(ims)
    except (TypeError, ValueError):
        return False
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return v.last_updated.replace(tzinfo=UTC, microsecond=0) <= since

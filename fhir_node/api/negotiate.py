"""Content negotiation and request headers: _format / Accept, Content-Type, Prefer, _pretty."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import orjson
from starlette.requests import Request

from fhir_node.interactions.incoming import parse_query
from fhir_node.outcome import fail

FHIR_JSON = "application/fhir+json"
#: What `_format` or Accept may name for JSON, and the media type we answer with for each.
JSON_FORMATS = {
    "json": FHIR_JSON,
    FHIR_JSON: FHIR_JSON,
    "application/json+fhir": FHIR_JSON,
    "application/json": "application/json",
    "text/json": "application/json",
}
_ANY = {"*/*", "application/*"}
SUPPORTED_FORMATS = ("application/fhir+json", "json", "application/json")
#: The one patch format PATCH takes (JSON Patch, RFC 6902).
JSON_PATCH = "application/json-patch+json"
#: Parameters this layer consumes; interactions never see them.
HTTP_PARAMETERS = ("_format", "_pretty")


@dataclass(frozen=True)
class Negotiated:
    """How to answer: media type, pretty-printing, and the client's Prefer return= choice."""

    media_type: str
    pretty: bool
    prefer_return: str

    def render(self, body: bytes) -> bytes:
        """Pretty-print only when asked: the stored bytes go out untouched otherwise."""
        return orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2) if self.pretty else body


def query_pairs(request: Request) -> tuple[tuple[str, str], ...]:
    """The URL's parameters in order, blanks kept (`incoming.parse_query`, as a form body's), parsed once per
    query string: through Starlette's `query_params` ~7.6 us a request, and an aggregator's searches repeat
    all day."""
    return _pairs(request.scope.get("query_string", b""))


@lru_cache(maxsize=4096)
def _pairs(query: bytes) -> tuple[tuple[str, str], ...]:
    return tuple(parse_query(query))


def _last(pairs: tuple[tuple[str, str], ...], name: str) -> str | None:
    """The value of parameter `name`, its last if repeated (as `query_params.get`)."""
    for key, value in reversed(pairs):
        if key == name:
            return value
    return None


def negotiate(request: Request) -> Negotiated:
    """Decide the response format; 406 when the client accepts nothing we can produce."""
    pairs = query_pairs(request)
    fmt = _last(pairs, "_format")
    if fmt is not None:
        media = JSON_FORMATS.get(fmt.split(";")[0].strip().lower())
        if media is None:
            raise fail(406, "not-supported", f"_format '{fmt}' is not supported; use json", "_format")
    else:
        media = _from_accept(request.headers.get("accept"))
    pretty = (_last(pairs, "_pretty") or "false").lower() == "true"
    return Negotiated(media, pretty, prefer(request, "return") or "representation")


@lru_cache(maxsize=256)
def _from_accept(accept: str | None) -> str:
    if not accept:
        return FHIR_JSON
    offered = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    for media in offered:
        if media in JSON_FORMATS:
            return JSON_FORMATS[media]
    if any(media in _ANY for media in offered):
        return FHIR_JSON
    raise fail(406, "not-supported", f"Cannot answer in any of '{accept}'; this node speaks {FHIR_JSON}")


def prefer(request: Request, key: str) -> str | None:
    """A token of the Prefer header (`return`, `handling`), e.g. `return=minimal` -> 'minimal'."""
    return _preferences(request.headers.get("prefer", "")).get(key)


@lru_cache(maxsize=256)
def _preferences(header: str) -> dict[str, str]:
    """The Prefer header's tokens by name (the first of a name repeated), parsed once per header value: a
    request asks for two or three of them, and clients send the same header every time."""
    found: dict[str, str] = {}
    for part in header.replace(";", ",").split(","):
        name, _, value = part.strip().partition("=")
        found.setdefault(name.strip().lower(), value.strip().strip('"'))
    return found


async def read_body(request: Request, limit: int, form: bool = False) -> bytes:
    """The request body: 415 unless JSON (or, with `form`, already checked by the caller), 413 past `limit`."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not form and ctype not in JSON_FORMATS:
        raise fail(
            415,
            "not-supported",
            f"Content-Type '{ctype or '(none)'}' is not supported; send {FHIR_JSON}",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> Exception:
    return fail(413, "too-costly", f"The request body is larger than the limit of {limit} bytes")

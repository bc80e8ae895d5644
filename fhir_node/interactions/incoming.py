"""Checks every resource body must pass before it is written: shape, type, id, base-R4 structure, and
(when the node enforces profiles) the core invariants and the profiles it must conform to."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

import orjson

from fhir_node.outcome import FHIRError, fail
from fhir_node.rules import minimisation
from fhir_node.validation.structure import validate_structure
from fhir_node.validation.validator import ERRORS, conformance

ID_PATTERN = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def check_id(res_id: str) -> str:
    """A logical id as R4 defines it; anything else in a URL is a 400, not a 404."""
    if not ID_PATTERN.fullmatch(res_id):
        raise fail(400, "value", f"'{res_id}' is not a valid id (1-64 of A-Z a-z 0-9 - .)")
    return res_id


def whole_number(text: str) -> int | None:
    """`text` as a positive integer the database can hold (64-bit), or None: `99999999999999999999999`
    is no version, cursor or count of ours, and must not reach the SQL as one."""
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        return None
    return int(text) or None


def parse_body(raw: bytes, max_depth: int) -> Any:
    """JSON text to Python values. Malformed JSON is a 400 naming the position; so is JSON nested deeper
    than `max_depth` (validation, indexing and storage recurse over it) and an object repeating a key
    (R4 JSON forbids it, and orjson would silently keep the last one)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise fail(400, "structure", f"Malformed JSON: {exc}") from None
    if _strings(value, max_depth) != _strings_written(raw):
        raise fail(400, "structure", f"Malformed JSON: {_repeated_key(raw)}")
    return value


def parse_query(text: str | bytes) -> list[tuple[str, str]]:
    """`a=1&b=2` (a query string or form body) to pairs; bytes or a percent-escape that are not UTF-8
    (`%ff`) are a 400, not a silent U+FFFD."""
    try:
        return parse_qsl(text.decode() if isinstance(text, bytes) else text, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError as exc:
        raise fail(400, "value", f"Search parameters must be UTF-8 when percent-decoded: {exc.reason}") from None


_CONTAINERS = (dict, list)


def _strings(value: Any, max_depth: int) -> int:
    """The number of strings in `value` (object keys and string values); a 400 when it nests deeper than
    `max_depth`. Level by level, on orjson's exact types: this runs on every body, so it stays lean."""
    count, level, depth = 0, [value], 0
    while level:
        if depth == max_depth and any(type(node) in _CONTAINERS for node in level):
            raise fail(400, "structure", f"The JSON nests deeper than {max_depth} levels")
        below: list[Any] = []
        for node in level:
            kind = type(node)
            if kind is str:
                count += 1
            elif kind is dict:
                count += len(node)
                below.extend(node.values())
            elif kind is list:
                below.extend(node)
        level, depth = below, depth + 1
    return count


def _strings_written(raw: bytes) -> int:
    """The number of strings in valid JSON text, repeated keys (and the values they lose) included: half
    its quotes that are not escaped. Outside strings JSON has no backslash, and inside one every `\\\\`
    pair is a whole escape, so once those pairs are gone each `\\"` left is an escaped quote."""
    plain = raw.replace(b"\\\\", b"") if b"\\\\" in raw else raw
    return (raw.count(b'"') - plain.count(b'\\"')) // 2


def _repeated_key(raw: bytes) -> str:
    """Which key an object repeats (found only once one is known to, with the slower parser)."""

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(key)
            seen.add(key)
        return dict(pairs)

    try:
        json.loads(raw, object_pairs_hook=unique)
    except ValueError as exc:
        return f"the key '{exc.args[0]}' appears twice in one object"
    return "an object repeats a key"


def check_resource(body: Any, res_type: str, url_id: str | None = None, *, enforce_profiles: bool) -> dict[str, Any]:
    """The resource to store, or a 400 listing every structural problem, or (enforcing profiles) a 422
    listing where it does not conform, or what data minimisation forbids storing. `url_id` is set for updates."""
    if not isinstance(body, dict):
        raise fail(400, "structure", "The body must be a JSON object holding one resource")
    given = body.get("resourceType")
    if given != res_type:
        raise fail(400, "invalid", f"resourceType is '{given}' but the URL expects '{res_type}'", "resourceType")
    if url_id is not None:
        if "id" not in body:
            raise fail(400, "required", "An update must carry the resource id in the body", f"{res_type}.id")
        if body["id"] != url_id:
            raise fail(400, "invalid", f"Body id '{body['id']}' does not match URL id '{url_id}'", f"{res_type}.id")
    if url_id is None:
        body = {k: v for k, v in body.items() if k != "id"}  # R4: the server ignores a client id on create
    issues = [i for i in validate_structure(body) if i.severity in ERRORS]
    if issues:
        raise FHIRError(400, issues)
    if enforce_profiles:
        refused = [i for i in conformance(body) if i.severity in ERRORS]
        if refused:
            raise FHIRError(422, refused)
    minimisation.check(body, demographics=enforce_profiles)  # after the profiles, which say it in their terms
    return body


def single_values(params: list[tuple[str, str]], allowed: tuple[str, ...], what: str) -> dict[str, str]:
    """Parameters of an interaction that takes each of `allowed` at most once (400 naming any other, or
    a repeated one); `what` names the interaction in the message."""
    values: dict[str, str] = {}
    for name, value in params:
        if name not in allowed:
            raise fail(400, "not-supported", f"Unknown {what} parameter '{name}'", name)
        if name in values:
            raise fail(400, "invalid", f"{what[0].upper()}{what[1:]} parameter '{name}' may appear only once", name)
        values[name] = value
    return values

"""Checks every resource body must pass before it is written: shape, type, id, base-R4 structure, and
(when the node enforces profiles) the core invariants and the profiles it must conform to."""

from __future__ import annotations

import re
from typing import Any

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


def parse_body(raw: bytes) -> Any:
    """JSON text to Python values; malformed JSON is a 400 naming the position."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise fail(400, "structure", f"Malformed JSON: {exc}") from None


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

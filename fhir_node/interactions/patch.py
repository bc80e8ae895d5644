"""patch: JSON Patch (RFC 6902) applied to the current version, then checked and stored like an update."""

from __future__ import annotations

from typing import Any

import jsonpatch
from sqlalchemy import Connection

from fhir_node.interactions.incoming import check_id, check_resource
from fhir_node.interactions.write import Written, parse_if_match, transaction, update_in
from fhir_node.node import Node
from fhir_node.outcome import fail
from fhir_node.registry import kind, require
from fhir_node.rules.pseudonym import in_clear
from fhir_node.store import repository

_SERVER_OWNED = ("/id", "/resourceType", "/meta/versionId", "/meta/lastUpdated")


def patch(node: Node, res_type: str, res_id: str, operations: Any, if_match: str | None = None) -> Written:
    """PATCH [type]/[id] with an application/json-patch+json body."""
    require(kind(res_type), "patch")
    check_id(res_id)
    expected = parse_if_match(if_match)
    with transaction(node) as conn:
        return patch_in(conn, res_type, res_id, operations, expected, node.settings.enforce_profiles)


def patch_in(
    conn: Connection, res_type: str, res_id: str, operations: Any, expected: int | None, enforce_profiles: bool
) -> Written:
    """Apply `operations` to the current version inside the caller's transaction."""
    current = repository.current(conn, res_type, res_id, for_update=True)
    if current is None:
        raise fail(404, "not-found", f"{res_type}/{res_id} is not known")
    if current.deleted or current.content is None:
        raise fail(410, "deleted", f"{res_type}/{res_id} was deleted; a patch needs a current version")
    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise fail(400, "structure", "A JSON Patch body is an array of operation objects")
    for op in operations:
        paths = [str(op.get(k, "")) for k in ("path", "from")]
        if any(path == p or path.startswith(p + "/") for path in paths for p in _SERVER_OWNED):
            raise fail(400, "invalid", f"JSON Patch may not change {op.get('path')}: the server owns it")
    try:
        patched = jsonpatch.apply_patch(in_clear(current.content), operations)  # as the client saw it
    except (jsonpatch.InvalidJsonPatch, TypeError, KeyError, ValueError) as exc:
        raise fail(400, "structure", f"Malformed JSON Patch: {exc}") from None
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise fail(422, "processing", f"JSON Patch failed: {exc}") from None
    resource = check_resource(patched, res_type, url_id=res_id, enforce_profiles=enforce_profiles)
    return update_in(conn, res_type, res_id, resource, expected)

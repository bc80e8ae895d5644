"""$validate (R4 Resource-validate): judge a resource without storing it, answer 200 with the outcome.

`POST [type]/$validate` and `POST [type]/[id]/$validate` take a Parameters body (`resource`, `profile`,
`mode`) or a bare resource; `profile` and `mode` may also be URL parameters. The checks are those a
write would make on this node (structure, core invariants, declared profiles, and the node's own
profile for the type when it enforces profiles), plus the asked profile. `mode=update` also checks the
id against the URL; `mode=delete` checks that the resource exists and that this type may be deleted.
Only a request that cannot be understood (no resource to judge, an unknown mode) is an error answer.
"""

from __future__ import annotations

from typing import Any

from fhir_node.interactions.incoming import check_id
from fhir_node.node import Node
from fhir_node.outcome import Issue, error, fail, operation_outcome
from fhir_node.registry import kind
from fhir_node.security import policy
from fhir_node.store import repository
from fhir_node.validation.validator import validate

MODES = ("create", "update", "delete")
DEFINITION = "http://hl7.org/fhir/OperationDefinition/Resource-validate"


def _parameters(body: Any) -> dict[str, Any]:
    """The operation's inputs from a Parameters body; any other resource is the resource to judge."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        return {"resource": body} if body is not None else {}
    found: dict[str, Any] = {}
    for p in body.get("parameter", ()):
        if not isinstance(p, dict):
            continue
        name = p.get("name")
        if name == "resource":
            found["resource"] = p.get("resource")
        elif name == "profile":
            found["profile"] = p.get("valueUri") or p.get("valueCanonical")
        elif name == "mode":
            found["mode"] = p.get("valueCode")
    return found


def validate_operation(
    node: Node, res_type: str, res_id: str | None, query: list[tuple[str, str]], body: Any
) -> dict[str, Any]:
    """The OperationOutcome of $validate on `res_type` (and `res_id` at instance level)."""
    res_kind = kind(res_type)
    if res_id is not None:
        check_id(res_id)
    inputs = {**_parameters(body), **{k: v for k, v in query if k in ("profile", "mode")}}
    mode = inputs.get("mode") or "create"
    if mode not in MODES:
        raise fail(400, "invalid", f"$validate mode must be one of {', '.join(MODES)}, not '{mode}'")
    issues: list[Issue] = []
    if mode == "delete":
        if res_id is None:
            raise fail(400, "required", "$validate with mode=delete names the resource: [type]/[id]/$validate")
        with node.db.read() as conn:
            current = repository.current(conn, res_type, res_id)
            if current is not None and not current.deleted:
                policy.readable(conn, res_type, res_id, full=True)
        if current is None or current.deleted:
            issues.append(error("not-found", f"{res_type}/{res_id} does not exist: there is nothing to delete"))
        if not res_kind.allows("delete"):
            issues.append(error("business-rule", f"{res_type} resources may not be deleted on this node"))
        return operation_outcome(issues)
    resource = inputs.get("resource")
    if resource is None:
        raise fail(400, "required", "$validate needs the resource to judge: a Parameters 'resource' or the body")
    if isinstance(resource, dict) and resource.get("resourceType") != res_type:
        given = resource.get("resourceType")
        issues.append(error("invalid", f"resourceType is '{given}' but the URL expects '{res_type}'", "resourceType"))
    if mode == "update":
        given_id = resource.get("id") if isinstance(resource, dict) else None
        if given_id is None:
            issues.append(error("required", "An update carries the resource id", f"{res_type}.id"))
        elif res_id is not None and given_id != res_id:
            issues.append(error("invalid", f"Resource id '{given_id}' is not the URL's '{res_id}'", f"{res_type}.id"))
    profile = inputs.get("profile")
    issues += validate(resource, [profile] if profile else None, required=node.settings.enforce_profiles)
    return operation_outcome(issues)

"""The SSIN never rests in clear (deliberation 18/053, annex item 3). Every Identifier of the SSIN system,
wherever it sits in a resource (Patient.identifier, a reference by identifier, an AuditEvent agent), is
stored as the node's keyed pseudonym (`fhir_node.security.keyring`), marked with infsec's
`be-ext-pseudonymization` on its value. Index rows are extracted from the stored form, so they hold the
pseudonym too, and a search by a clear SSIN looks for its pseudonyms.

On the way out each caller gets what it is entitled to: the operator every SSIN in clear; the aggregator
never one, but its own pseudonyms (stable for it, useless to anyone else); anyone else the SSINs of the
patients whose data it may see in clear (the policy already decided it may see them), and other people's
SSINs (an AuditEvent's agents, a Practitioner's) only when they are its own, else as its pseudonyms."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import orjson

from fhir_node.registry import CONFORMANCE_TYPES
from fhir_node.rules.check_digits import ssin_error
from fhir_node.security.access import current
from fhir_node.security.keyring import STORED, Keyring, installed, kid_of, recipient
from fhir_node.security.principal import Principal
from fhir_node.security.relationships import SSIN

EXTENSION = "https://www.ehealth.fgov.be/standards/fhir/infsec/StructureDefinition/be-ext-pseudonymization"
_MARKER = {"url": EXTENSION, "extension": [{"url": "marker", "valueBoolean": True}]}
_MARKED = EXTENSION.encode()
_SYSTEM = SSIN.encode()
#: Resources whose SSINs are those of people acting (or of the directory), not of the patient concerned.
PERSON_TYPES = frozenset({"AuditEvent", "Practitioner", "PractitionerRole", "Organization", "RelatedPerson"})
_SSIN_LIKE = re.compile(r"(?<![0-9])[0-9]{11}(?![0-9])")
_CONTAINERS = (dict, list)

#: (an SSIN Identifier as stored, the type of the resource holding it) -> the Identifier to put instead.
Fix = Callable[[dict[str, Any], str | None], dict[str, Any]]


def protect(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource as it may rest: every SSIN Identifier's value pseudonymised (a value that is already one
    of the node's pseudonyms stays as it is). The published guide's resources are left alone."""
    if resource.get("resourceType") in CONFORMANCE_TYPES or not holds_ssin(resource):
        return resource
    return _sealed(resource)


def protected(resource: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """`protect(resource)` and its JSON, for a write: serialised once when it names no SSIN (most resources),
    where `protect` and then storing would serialise it twice."""
    content = orjson.dumps(resource)
    if _SYSTEM not in content or resource.get("resourceType") in CONFORMANCE_TYPES:
        return resource, content
    sealed = _sealed(resource)
    return sealed, orjson.dumps(sealed)


def _sealed(resource: dict[str, Any]) -> dict[str, Any]:
    """Every SSIN Identifier's value as the node's pseudonym (one that already is stays as it is)."""
    ring = installed()

    def fix(identifier: dict[str, Any], _res_type: str | None) -> dict[str, Any]:
        value = identifier["value"]
        token = value if ring.open(value, STORED) is not None else ring.seal(value, STORED)
        return _marked(identifier, token)

    return _walk(resource, fix, None)


def holds_ssin(resource: dict[str, Any] | bytes) -> bool:
    """Whether the resource (or its JSON, when the caller has it) names the SSIN system at all (serialising
    it is ~10x cheaper than walking it)."""
    return _SYSTEM in (resource if isinstance(resource, bytes) else orjson.dumps(resource))


def clear(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource with every SSIN the node pseudonymised back in clear: for the node's own use (a JSON
    Patch applies to what the client saw), never stored."""
    ring = installed()

    def fix(identifier: dict[str, Any], _res_type: str | None) -> dict[str, Any]:
        value = ring.open(identifier["value"], STORED)
        return identifier if value is None else _unmarked(identifier, value)

    return _walk(resource, fix, None)


def in_clear(content: bytes) -> dict[str, Any]:
    """A stored resource parsed, its SSINs in clear: for the node's own reasoning (the inclusion rules, a
    JSON Patch applied to what the client saw), never stored. Walked only when it holds a pseudonym."""
    resource = orjson.loads(content)
    return clear(resource) if _MARKED in content else resource


def shown(body: bytes) -> bytes:
    """A response body (a resource, or a Bundle of them) as the current caller may see it."""
    if _MARKED not in body:
        return body
    return orjson.dumps(_walk(orjson.loads(body), _view(current().principal), None))


def shown_lines(ndjson: bytes) -> bytes:
    """NDJSON (a bulk export file) as the current caller may see it, line by line."""
    if _MARKED not in ndjson:
        return ndjson
    return b"\n".join(shown(line) if line else line for line in ndjson.split(b"\n"))


def _view(principal: Principal) -> Fix:
    ring = installed()
    role = principal.role
    own = _context_of(principal)

    def fix(identifier: dict[str, Any], res_type: str | None) -> dict[str, Any]:
        value = ring.open(identifier["value"], STORED)
        if value is None:  # not the node's pseudonym (another holder's): shown as it came
            return identifier
        entitled = role != "aggregator" and (res_type not in PERSON_TYPES or value == principal.sub)
        if role == "operator" or entitled:
            return _unmarked(identifier, value)
        return {**identifier, "value": ring.seal(value, own)}

    return fix


def _context_of(principal: Principal) -> bytes:
    """The context of the pseudonyms this caller is shown, and so searches by: one place for both."""
    return recipient(principal.client_id or principal.sub)


def search_forms(value: str) -> list[str]:
    """The stored values a search for this SSIN must match. The aggregator searches by the pseudonyms it
    was given (a clear SSIN from it matches nothing: it must not learn which pseudonym is whose); anyone
    else by the clear SSIN, or by a pseudonym it was given."""
    ring = installed()
    principal = current().principal
    found = ring.open(value, _context_of(principal))
    if found is None and principal.role == "aggregator":
        return []
    return ring.forms(found or value)


def may_be_ssin(value: str) -> bool:
    """Whether a value searched without a system could be an SSIN, or a pseudonym of one."""
    return (len(value) == 11 and value.isdigit()) or kid_of(value) is not None


def scrub(text: str) -> str:
    """Free text (a logged URL, an audited query) with every valid SSIN replaced by its pseudonym."""
    if _SSIN_LIKE.search(text) is None:
        return text
    return _scrubbed(text, installed())


@lru_cache(maxsize=4096)
def _scrubbed(text: str, ring: Keyring) -> str:
    """`scrub` of text holding 11 digits in a row, once per key ring: the same audited queries and logged
    URLs come back all day (an aggregator's, a NIHDI number's), and checking each such run cost ~5 us."""
    return _SSIN_LIKE.sub(lambda m: m[0] if ssin_error(m[0]) else ring.seal(m[0], STORED), text)


def _walk(node: Any, fix: Fix, res_type: str | None) -> Any:
    """`node` with `fix` applied to each SSIN Identifier, knowing which resource holds it; what holds none
    is returned as it is, not copied. Only containers are visited (most values are scalars)."""
    if type(node) is dict:
        named = node.get("resourceType")
        if isinstance(named, str):
            res_type = named
        if node.get("system") == SSIN and isinstance(node.get("value"), str):
            return fix(node, res_type)
        children: Any = node.items()
    elif type(node) is list:
        children = enumerate(node)
    else:
        return node
    out: Any = None
    for key, value in children:
        if type(value) in _CONTAINERS:
            walked = _walk(value, fix, res_type)
            if walked is not value:
                out = out or type(node)(node)
                out[key] = walked
    return node if out is None else out


def _marked(identifier: dict[str, Any], token: str) -> dict[str, Any]:
    value_element = identifier.get("_value") or {}
    others = [e for e in value_element.get("extension", []) if e.get("url") != EXTENSION]
    return {**identifier, "value": token, "_value": {**value_element, "extension": [*others, _MARKER]}}


def _unmarked(identifier: dict[str, Any], value: str) -> dict[str, Any]:
    out = {k: v for k, v in identifier.items() if k != "_value"}
    value_element = identifier.get("_value") or {}
    others = [e for e in value_element.get("extension", []) if e.get("url") != EXTENSION]
    rest = {k: v for k, v in value_element.items() if k != "extension"}
    if others:
        rest["extension"] = others
    if rest:
        out["_value"] = rest
    return {**out, "value": value}

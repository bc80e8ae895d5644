"""Terminology operations over the terminology the validator knows (ours in terminology/, the official R4
CodeSystems and ValueSets): ValueSet/$expand, ValueSet/$validate-code, CodeSystem/$lookup.

Each operation takes the URL's parameters and, for POST, a Parameters body; an instance-level call
(`ValueSet/[id]/...`) names a stored ValueSet instead of passing `url`. A value set that is not known
answers 404; one whose rules cannot be evaluated here (SNOMED CT, LOINC filters) 422, never a guess.
Inputs the operations define but these do not use (`date`, `activeOnly`, `displayLanguage`...) are ignored.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from fhir_node.interactions.read import read
from fhir_node.node import Node
from fhir_node.outcome import fail
from fhir_node.validation.terminology import Expansion, Terminology, terminology, walk_concepts

EXPAND = "http://hl7.org/fhir/OperationDefinition/ValueSet-expand"
VALIDATE_CODE = "http://hl7.org/fhir/OperationDefinition/ValueSet-validate-code"
LOOKUP = "http://hl7.org/fhir/OperationDefinition/CodeSystem-lookup"
#: The operations each type offers (name, official definition), for the CapabilityStatement.
OPERATIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "ValueSet": (("expand", EXPAND), ("validate-code", VALIDATE_CODE)),
    "CodeSystem": (("lookup", LOOKUP),),
}

Query = list[tuple[str, str]]


def inputs(query: Query, body: Any) -> dict[str, Any]:
    """The operation's inputs by name: a Parameters body's values, then the URL's (the first of each wins)."""
    found: dict[str, Any] = {}
    if body is not None:
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise fail(400, "invalid", "A terminology operation takes a Parameters resource as its body")
        for p in body.get("parameter", ()):
            if isinstance(p, dict) and isinstance(p.get("name"), str):
                value = next((v for k, v in p.items() if k.startswith("value")), p.get("resource"))
                found.setdefault(p["name"], value)
    for name, value in query:
        found.setdefault(name, value)
    return found


def expand(node: Node, query: Query, body: Any, res_id: str | None = None) -> dict[str, Any]:
    """$expand: the value set with an `expansion` of its codes (sorted), narrowed by `filter` (a
    case-insensitive part of the code or display), paged by `offset` and `count`."""
    known = terminology()
    given = inputs(query, body)
    if "valueSet" in given:
        raise fail(400, "not-supported", "$expand expands the value sets known here: name one by url or id")
    value_set = _value_set(node, res_id, given, known)
    found = _expansion(value_set, known)
    text = _string(given, "filter")
    offset, count = _integer(given, "offset"), _integer(given, "count")
    concepts = _concepts(known, value_set, found)
    codes = []
    for system, code in sorted(found.pairs):
        display = concepts.get((system, code), {}).get("display")
        if text is None or any(text.casefold() in s.casefold() for s in (code, display or "")):
            codes.append({"system": system, "code": code, **({"display": display} if display else {})})
    start = offset or 0
    page = codes[start : start + count if count is not None else None]
    parameters = [
        {"name": name, "valueString" if name == "filter" else "valueInteger": value}
        for name, value in (("filter", text), ("offset", offset), ("count", count))
        if value is not None
    ]
    expansion: dict[str, Any] = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "total": len(codes),
        **({"offset": offset} if offset is not None else {}),
        **({"parameter": parameters} if parameters else {}),
        **({"contains": page} if page else {}),
    }
    head = {k: v for k, v in value_set.items() if k not in ("compose", "expansion", "text", "meta")}
    return {"resourceType": "ValueSet", **head, "expansion": expansion}


def validate_code(node: Node, query: Query, body: Any, res_id: str | None = None) -> dict[str, Any]:
    """$validate-code: whether a code (`system` + `code`, a `coding` or a `codeableConcept`) is in the value
    set, and when a `display` is given, whether it is the code's display."""
    known = terminology()
    given = inputs(query, body)
    value_set = _value_set(node, res_id, given, known)
    found = _expansion(value_set, known)
    codings = _codings(given)
    member = next((c for c in codings if found.contains(c.get("system"), c["code"])), None)
    if member is None:
        shown = ", ".join(_shown(c) for c in codings)
        return _parameters(result=False, message=f"{shown} is not in the value set {value_set['url']}")
    system = member.get("system") or next(s for s, code in found.pairs if code == member["code"])
    display = _concepts(known, value_set, found).get((system, member["code"]), {}).get("display")
    given_display = member.get("display") or _string(given, "display")
    if given_display is not None and display is not None and given_display != display:
        message = f"'{given_display}' is not the display of {_shown(member)}, which is '{display}'"
        return _parameters(result=False, message=message, display=display)
    return _parameters(result=True, display=display)


def lookup(_node: Node, query: Query, body: Any) -> dict[str, Any]:
    """$lookup: the name of the code system and the code's display (and designations, when it has any)."""
    known = terminology()
    given = inputs(query, body)
    coding = given.get("coding") if isinstance(given.get("coding"), dict) else given
    system, code = coding.get("system"), coding.get("code")
    if not isinstance(system, str) or not isinstance(code, str):
        raise fail(400, "required", "$lookup needs a system and a code (or a coding)")
    code_system = known.code_systems.get(system)
    if code_system is None:
        raise fail(404, "not-found", f"The code system {system} is not known here")
    concept = next((c for c in walk_concepts(code_system.get("concept", [])) if c["code"] == code), None)
    if concept is None:
        raise fail(404, "not-found", f"'{code}' is not a code of {system}")
    out = [
        {"name": "name", "valueString": code_system.get("name") or code_system["url"]},
        *([{"name": "version", "valueString": code_system["version"]}] if "version" in code_system else []),
        {"name": "display", "valueString": concept.get("display", code)},
    ]
    for d in concept.get("designation", ()):
        parts = [
            *([{"name": "language", "valueCode": d["language"]}] if "language" in d else []),
            *([{"name": "use", "valueCoding": d["use"]}] if "use" in d else []),
            {"name": "value", "valueString": d["value"]},
        ]
        out.append({"name": "designation", "part": parts})
    return {"resourceType": "Parameters", "parameter": out}


def _value_set(node: Node, res_id: str | None, given: dict[str, Any], known: Terminology) -> dict[str, Any]:
    """The value set an operation works on: the stored one at instance level, else the one named by `url`."""
    if res_id is not None:
        url = orjson.loads(read(node, "ValueSet", res_id).content or b"{}")["url"]
    else:
        url = _string(given, "url")
        if url is None:
            raise fail(400, "required", "Name the value set: a url parameter, or ValueSet/[id]/$...")
    canonical, _, version = url.partition("|")
    value_set = known.value_sets.get(canonical)
    if value_set is None or (version and value_set.get("version", version) != version):
        raise fail(404, "not-found", f"The value set {url} is not known here")
    return value_set


def _expansion(value_set: dict[str, Any], known: Terminology) -> Expansion:
    found = known.expansion(value_set["url"])
    if found is None:
        raise fail(422, "not-supported", f"The value set {value_set['url']} cannot be expanded here")
    return found


def _concepts(known: Terminology, value_set: dict[str, Any], found: Expansion) -> dict[tuple[str, str], Any]:
    """What is known of the expansion's codes, by (system, code): the concept in its code system, or the
    value set's own listing of it when that gives a display (it wins)."""
    systems = {system for system, _ in found.pairs}
    concepts = {
        (system, c["code"]): c
        for system in systems
        for c in walk_concepts(known.code_systems.get(system, {}).get("concept", []))
    }
    for include in value_set.get("compose", {}).get("include", ()):
        listed = include.get("concept", ()) if "system" in include else ()
        concepts.update(((include["system"], c["code"]), c) for c in listed if "display" in c)
    return concepts


def _codings(given: dict[str, Any]) -> list[dict[str, Any]]:
    """The codings to check: `code` (with `system`), a `coding`, or a `codeableConcept`'s codings."""
    if isinstance(given.get("code"), str):
        system = _string(given, "system")
        return [{"code": given["code"], **({"system": system} if system else {})}]
    if isinstance(given.get("coding"), dict):
        codings = [given["coding"]]
    elif isinstance(given.get("codeableConcept"), dict):
        codings = given["codeableConcept"].get("coding", [])
    else:
        codings = []
    codings = [c for c in codings if isinstance(c, dict) and isinstance(c.get("code"), str)]
    if not codings:
        raise fail(400, "required", "$validate-code needs a code (with its system), a coding or a codeableConcept")
    return codings


def _shown(coding: dict[str, Any]) -> str:
    return f"{coding['system']}|{coding['code']}" if coding.get("system") else coding["code"]


def _string(given: dict[str, Any], name: str) -> str | None:
    value = given.get(name)
    if value is not None and not isinstance(value, str):
        raise fail(400, "invalid", f"Parameter '{name}' must be a string", name)
    return value


def _integer(given: dict[str, Any], name: str) -> int | None:
    """A non-negative integer input, from the URL (text) or a Parameters body (valueInteger)."""
    value = given.get(name)
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise fail(400, "invalid", f"Parameter '{name}' must be a non-negative integer, not '{value}'", name)


def _parameters(*, result: bool, message: str | None = None, display: str | None = None) -> dict[str, Any]:
    out: list[dict[str, Any]] = [{"name": "result", "valueBoolean": result}]
    if message is not None:
        out.append({"name": "message", "valueString": message})
    if display is not None:
        out.append({"name": "display", "valueString": display})
    return {"resourceType": "Parameters", "parameter": out}

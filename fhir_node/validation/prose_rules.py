"""Rules R4 states in prose rather than as invariants, which HL7's validator applies: on Bundles (fullUrl,
links, search results) and on the conformance resources the node publishes (absolute canonicals and
code systems, composite SearchParameters, CodeSystem supplements and properties), and those of the modules
it calls: bundle_references.py, structure_definition_rules.py, value_set_rules.py.

They run in `validate()` (the CLI, `$validate`, the agreement benchmark), on the resource, its contained
resources and each Bundle entry's resource.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from functools import cache
from typing import Any

from fhir_node.outcome import Issue, error
from fhir_node.search.registry import load_definitions
from fhir_node.validation.bundle_references import ambiguous_references
from fhir_node.validation.structure_definition_rules import structure_definition_rules
from fhir_node.validation.value_set_rules import value_set_rules

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_UUID = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CANONICAL_TYPES = frozenset(
    {"ValueSet", "CodeSystem", "StructureDefinition", "SearchParameter", "ImplementationGuide", "ConceptMap"}
)


def prose_rules(resource: dict[str, Any]) -> list[Issue]:
    """Every such rule `resource` (and what it carries) breaks."""
    return list(_check(resource, resource.get("resourceType", "")))


def _check(resource: dict[str, Any], where: str) -> Iterator[Issue]:
    rt = resource.get("resourceType")
    yield from _values(resource, where)
    if rt == "Bundle":
        yield from _bundle(resource, where)
    if rt in _CANONICAL_TYPES and isinstance(resource.get("url"), str) and not _SCHEME.match(resource["url"]):
        yield error("invalid", f"Canonical URL '{resource['url']}' must be absolute", f"{where}.url")
    if rt == "ValueSet":
        yield from _value_set(resource, where)
    elif rt == "CodeSystem":
        yield from _code_system(resource, where)
    elif rt == "SearchParameter":
        yield from _search_parameter(resource, where)
    elif rt == "StructureDefinition":
        yield from structure_definition_rules(resource, where)
    for i, contained in enumerate(resource.get("contained", [])):
        if isinstance(contained, dict):
            yield from _check(contained, f"{where}.contained[{i}]")


def _values(value: Any, where: str) -> Iterator[Issue]:
    """A `urn:uuid:` anywhere must be a valid, lowercase UUID (RFC 4122 as R4's uuid type has it); a
    Coding's system (an object with `system` and `code`) must be absolute, not a local reference."""
    if isinstance(value, str):
        if value.startswith("urn:uuid:") and not _UUID.fullmatch(value):
            yield error("value", f"'{value}' is not a valid lowercase urn:uuid", where)
    elif isinstance(value, dict):
        system = value.get("system")
        if "code" in value and isinstance(system, str) and not _SCHEME.match(system):
            yield error("invalid", f"Coding.system '{system}' must be an absolute URI", f"{where}.system")
        for key, child in value.items():
            if key not in ("contained", "entry"):  # checked where those resources are
                yield from _values(child, f"{where}.{key}")
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _values(child, f"{where}[{i}]")


def _bundle(bundle: dict[str, Any], where: str) -> Iterator[Issue]:
    relations = Counter(link.get("relation") for link in bundle.get("link", []) if isinstance(link, dict))
    for relation, n in relations.items():
        if n > 1:
            yield error("invalid", f"The link relation '{relation}' may occur only once", f"{where}.link")
    yield from ambiguous_references(bundle, where)
    searchset = bundle.get("type") == "searchset"
    for i, entry in enumerate(bundle.get("entry", [])):
        if not isinstance(entry, dict):
            continue
        at = f"{where}.entry[{i}]"
        resource = entry.get("resource")
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str) and not _SCHEME.match(full_url):
            yield error("invalid", f"fullUrl '{full_url}' must be an absolute URL", f"{at}.fullUrl")
        if not isinstance(resource, dict):
            continue
        rt, rid = resource.get("resourceType"), resource.get("id")
        mode = entry.get("search", {}).get("mode") if isinstance(entry.get("search"), dict) else None
        if rt == "OperationOutcome" and rid is None and mode in (None, "outcome"):
            continue  # a search's outcome (issues about the search itself) need not be stored anywhere
        if isinstance(full_url, str) and full_url.startswith(("http:", "https:")):
            tail = full_url.split("/_history/")[0].rstrip("/")
            if rid is None or not tail.endswith(f"/{rt}/{rid}"):
                yield error("invalid", f"fullUrl '{full_url}' does not end with {rt}/{rid}", f"{at}.fullUrl")
        if searchset and mode == "outcome" and rt != "OperationOutcome":
            yield error("invalid", f"A search entry of mode outcome must be an OperationOutcome, not {rt}", at)
        elif searchset and rid is None:
            yield error("required", "Search results must have ids", f"{at}.resource.id")
        yield from _check(resource, f"{at}.resource")


def _value_set(value_set: dict[str, Any], where: str) -> Iterator[Issue]:
    compose = value_set.get("compose", {})
    for part in ("include", "exclude"):
        for i, item in enumerate(compose.get(part, []) if isinstance(compose, dict) else []):
            system = item.get("system") if isinstance(item, dict) else None
            if isinstance(system, str) and not _SCHEME.match(system):
                at = f"{where}.compose.{part}[{i}].system"
                yield error("invalid", f"ValueSet.compose.{part}.system '{system}' must be an absolute URI", at)
    yield from value_set_rules(value_set, where)


def _code_system(code_system: dict[str, Any], where: str) -> Iterator[Issue]:
    if "supplements" in code_system and code_system.get("content") != "supplement":
        yield error("invalid", "A CodeSystem that supplements another must have content 'supplement'", where)
    codes = Counter(p.get("code") for p in code_system.get("property", []) if isinstance(p, dict))
    for code, n in codes.items():
        if n > 1:
            yield error("invalid", f"The property code '{code}' is defined {n} times", f"{where}.property")


def _search_parameter(parameter: dict[str, Any], where: str) -> Iterator[Issue]:
    """Composites need components; one derived from an official R4 parameter keeps its type and bases."""
    if parameter.get("type") == "composite" and len(parameter.get("component", [])) < 2:
        yield error("invalid", "A composite SearchParameter must define two or more components", f"{where}.component")
    parent = _official_search_parameters().get(parameter.get("derivedFrom"))
    if parent is None:
        return
    if parameter.get("type") != parent["type"]:
        text = f"type {parameter.get('type')} differs from {parent['type']} of {parent['url']} it derives from"
        yield error("invalid", text, f"{where}.type")
    extra = set(parameter.get("base", [])) - set(parent["base"])
    if extra:
        text = f"base {', '.join(sorted(extra))} is not a base of {parent['url']} it derives from"
        yield error("invalid", text, f"{where}.base")


@cache
def _official_search_parameters() -> dict[str, dict[str, Any]]:
    return {d["url"]: d for d in load_definitions() if d["url"].startswith("http://hl7.org/fhir/SearchParameter/")}

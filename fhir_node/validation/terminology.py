"""ValueSet expansion, as far as local definitions allow: what binding checks compare codes against.

The definitions are the official R4 CodeSystems and ValueSets (fhir_node/data/r4/terminology.json, from
scripts/extract_r4_definitions.py), those we carry of the Belgian packages our guide depends on
(fhir_node/data/packages/, from scripts/build_be_definitions.py) and ours in terminology/. A value set
is expanded from its compose: enumerated concepts, whole code systems known here in full, `is-a` /
`descendent-of` / `is-not-a` / `=` filters on their concept hierarchy, imported value sets, excludes.
Anything else (SNOMED CT, LOINC filters, UCUM) cannot be expanded here: the answer is then "unknown",
never a false error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import orjson

_DATA = Path(__file__).resolve().parent.parent / "data" / "r4" / "terminology.json"
TERMINOLOGY_DIR = Path(__file__).resolve().parents[2] / "terminology"
#: Definitions of the packages our guide depends on, one folder per package (not ours: never published).
DEPENDENCIES_DIR = Path(__file__).resolve().parent.parent / "data" / "packages"


@dataclass(frozen=True)
class Expansion:
    """The codes of a value set: (system, code) pairs, and the bare codes (for `code` elements)."""

    pairs: frozenset[tuple[str, str]]

    @cached_property
    def codes(self) -> frozenset[str]:
        return frozenset(code for _, code in self.pairs)

    def contains(self, system: str | None, code: str) -> bool:
        """A code element has no system: any system of the value set will do."""
        if system is None:
            return code in self.codes
        return (system, code) in self.pairs


class Terminology:
    """CodeSystems and ValueSets by canonical URL; expansions computed on first use, then kept."""

    def __init__(self, resources: Iterable[dict[str, Any]]) -> None:
        self.code_systems: dict[str, dict[str, Any]] = {}
        self.value_sets: dict[str, dict[str, Any]] = {}
        for resource in resources:
            target = {"CodeSystem": self.code_systems, "ValueSet": self.value_sets}.get(
                resource.get("resourceType", "")
            )
            if target is not None and "url" in resource:
                target[resource["url"]] = resource
        self._expansions: dict[str, Expansion | None] = {}

    def expansion(self, url: str) -> Expansion | None:
        """The value set's codes, or None when it is unknown here or cannot be expanded locally."""
        url = url.split("|")[0]
        if url not in self._expansions:
            self._expansions[url] = None  # a value set that imports itself expands to "unknown"
            self._expansions[url] = self._expand(url)
        return self._expansions[url]

    def check(self, value_set: str, system: str | None, code: str) -> bool | None:
        """Whether the code is in the value set; None when that cannot be told here."""
        found = self.expansion(value_set)
        return None if found is None else found.contains(system, code)

    def _expand(self, url: str) -> Expansion | None:
        value_set = self.value_sets.get(url)
        if value_set is None:
            return None
        compose = value_set.get("compose")
        if compose is None:
            contains = value_set.get("expansion", {}).get("contains")
            return Expansion(frozenset(_flatten(contains))) if contains else None
        included: set[tuple[str, str]] = set()
        for include in compose.get("include", ()):
            pairs = self._part(include)
            if pairs is None:
                return None
            included |= pairs
        for exclude in compose.get("exclude", ()):
            pairs = self._part(exclude)
            if pairs is None:
                return None
            included -= pairs
        return Expansion(frozenset(included))

    def _part(self, part: dict[str, Any]) -> set[tuple[str, str]] | None:
        """One include or exclude: the intersection of its system selection and its imported value sets."""
        selections: list[set[tuple[str, str]]] = []
        system = part.get("system")
        if system is not None:
            codes = self._system_codes(system, part)
            if codes is None:
                return None
            selections.append({(system, code) for code in codes})
        for imported in part.get("valueSet", ()):
            found = self.expansion(imported)
            if found is None:
                return None
            selections.append(set(found.pairs))
        if not selections:
            return None
        return set.intersection(*selections)

    def _system_codes(self, system: str, part: dict[str, Any]) -> set[str] | None:
        if "concept" in part:  # enumerated codes count even for systems we do not hold (LOINC, SNOMED CT)
            return {concept["code"] for concept in part["concept"]}
        code_system = self.code_systems.get(system)
        if code_system is None or code_system.get("content") not in ("complete", None):
            return None
        tree = code_system.get("concept", [])
        codes = {c["code"] for c in walk_concepts(tree) if not _abstract(c)}
        for rule in part.get("filter", ()):
            selected = _filtered(tree, rule)
            if selected is None:
                return None
            codes &= selected
        return codes


def walk_concepts(concepts: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every concept of a CodeSystem's tree, each before its children (also for the terminology operations)."""
    for concept in concepts:
        yield concept
        yield from walk_concepts(concept.get("concept", []))


def _abstract(concept: dict[str, Any]) -> bool:
    """notSelectable / abstract concepts group others; they are not codes an instance may carry."""
    return any(
        p.get("code") in ("notSelectable", "abstract") and p.get("valueBoolean") for p in concept.get("property", ())
    )


def _filtered(tree: list[dict[str, Any]], rule: dict[str, Any]) -> set[str] | None:
    """The codes a hierarchy filter selects; None for filters on other properties."""
    if rule.get("property") != "concept":
        return None
    op, value = rule.get("op"), rule.get("value")
    everything = {c["code"] for c in walk_concepts(tree)}
    if op == "=":
        return {value} & everything
    root = next((c for c in walk_concepts(tree) if c["code"] == value), None)
    below = {c["code"] for c in walk_concepts(root.get("concept", []))} if root else set()
    if op == "is-a":
        return below | ({value} if root else set())
    if op == "descendent-of":
        return below
    if op == "is-not-a":
        return everything - below - {value}
    return None


def _flatten(contains: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for item in contains:
        if "code" in item and "system" in item and not item.get("abstract"):
            yield item["system"], item["code"]
        yield from _flatten(item.get("contains", []))


def resources_in(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Every resource in JSON files (Bundles are opened), for loading definitions from folders."""
    for path in paths:
        data = orjson.loads(path.read_bytes())
        if isinstance(data, dict) and data.get("resourceType") == "Bundle":
            yield from (e["resource"] for e in data.get("entry", ()) if isinstance(e.get("resource"), dict))
        elif isinstance(data, dict):
            yield data


def dependency_resources() -> Iterator[dict[str, Any]]:
    """The resources we carry of the packages our guide depends on (be-core's, infsec's)."""
    return (r for r in resources_in(sorted(DEPENDENCIES_DIR.glob("*/*.json"))) if "resourceType" in r)


@cache
def terminology() -> Terminology:
    """The process-wide terminology: official R4 definitions, our dependencies', then ours (ours win on the
    same URL)."""
    official = orjson.loads(_DATA.read_bytes())
    ours = resources_in(sorted(TERMINOLOGY_DIR.glob("*.json")))
    return Terminology([*official, *dependency_resources(), *ours])

"""Snapshot generation: a profile's differential laid over its base definition's snapshot.

Written by hand because no maintained Python library generates snapshots (the reference generator is the
HL7 Java one). It covers the R4 profiling rules this guide uses: constraining cardinality, types, fixed and
pattern values, bindings, must-support and texts; adding invariants; slicing (slices are copies of the
sliced element and its children, placed after it and after earlier slices); and stepping into a data type
(`EpisodeOfCare.patient.identifier.system`) by copying that type's elements from its base definition.
Differential elements are found by their element `id`, so every differential element must carry one.

An extension slice is expanded from the base Extension definition, not from its `profile` (be-core's
recorder): the differential states what this guide relies on (url, value type), and the validator checks
each extension against its own definition (fhir_node/data/packages/ for be-core's and infsec's).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any

import orjson

CORE_DIR = Path(__file__).resolve().parent.parent / "data" / "r4" / "structure-definitions"
CORE_PREFIX = "http://hl7.org/fhir/StructureDefinition/"

#: Resolves a canonical URL to a StructureDefinition that has a snapshot, or None when unknown.
Resolver = Callable[[str], dict[str, Any] | None]

_VALUE_PREFIXES = ("fixed", "pattern")
_SLICE = re.compile(r":[^.]+")


class SnapshotError(ValueError):
    """The differential cannot be applied to its base (unknown element, loosened cardinality, bad type...)."""


@cache
def _core_file(type_name: str) -> bytes:
    path = CORE_DIR / f"{type_name}.json"
    if not path.is_file():
        raise SnapshotError(f"no base definition for {type_name} in {CORE_DIR}")
    return path.read_bytes()


def core_definition(type_name: str) -> dict[str, Any]:
    """The official R4 StructureDefinition of a resource or data type (a fresh copy: callers may edit it)."""
    return orjson.loads(_core_file(type_name))


def resolve_core(url: str) -> dict[str, Any] | None:
    """Resolver for the official definitions shipped in fhir_node/data/r4/structure-definitions."""
    if not url.startswith(CORE_PREFIX):
        return None
    try:
        return core_definition(url.removeprefix(CORE_PREFIX))
    except SnapshotError:
        return None


def _path_of(element_id: str) -> str:
    """`AuditEvent.agent:user.who` -> `AuditEvent.agent.who`: paths do not name slices."""
    return _SLICE.sub("", element_id)


def _max(value: str) -> float:
    return float("inf") if value == "*" else int(value)


class _Snapshot:
    """The element list under construction, addressed by element id."""

    def __init__(self, elements: list[dict[str, Any]], url: str) -> None:
        self.elements = elements
        self.url = url

    def index(self, element_id: str) -> int | None:
        for i, element in enumerate(self.elements):
            if element["id"] == element_id:
                return i
        return None

    def locate(self, element_id: str) -> int:
        """The position of `element_id`, creating it (a new slice, or a data type's child) when needed."""
        found = self.index(element_id)
        if found is not None:
            return found
        if "." not in element_id:
            raise SnapshotError(f"{self.url}: {element_id} is not in the base definition")
        parent_id, last = element_id.rsplit(".", 1)
        if ":" in last:
            return self._add_slice(f"{parent_id}.{last.split(':', 1)[0]}", last.split(":", 1)[1])
        self._expand(self.locate(parent_id))
        found = self.index(element_id)
        if found is None:
            raise SnapshotError(f"{self.url}: {element_id} is not in the base definition")
        return found

    def _region_end(self, start: int) -> int:
        """One past the last element that belongs to the element at `start` (children, then its slices)."""
        head = self.elements[start]["id"]
        end = start + 1
        while end < len(self.elements) and self.elements[end]["id"].startswith((head + ".", head + ":")):
            end += 1
        return end

    def _add_slice(self, sliced_id: str, slice_name: str) -> int:
        start = self.locate(sliced_id)
        sliced = self.elements[start]
        if "slicing" not in sliced and not sliced["path"].endswith(("extension", "modifierExtension")):
            raise SnapshotError(f"{self.url}: slice {slice_name} of {sliced_id}, which is not sliced")
        subtree = [sliced] + [e for e in self.elements[start + 1 :] if e["id"].startswith(sliced_id + ".")]
        copies = []
        for element in copy.deepcopy(subtree):
            element["id"] = f"{sliced_id}:{slice_name}" + element["id"][len(sliced_id) :]
            copies.append(element)
        copies[0]["sliceName"] = slice_name
        copies[0].pop("slicing", None)
        end = self._region_end(start)
        self.elements[end:end] = copies
        return end

    def _expand(self, position: int) -> None:
        """Insert the children of a data-typed element, copied from that type's base definition."""
        element = self.elements[position]
        following = self.elements[position + 1]["id"] if position + 1 < len(self.elements) else ""
        if following.startswith(element["id"] + "."):
            return  # its children are there already: the one asked for does not exist
        codes = {t["code"] for t in element.get("type", ())}
        if len(codes) != 1:
            raise SnapshotError(f"{self.url}: cannot step into {element['id']}: it needs exactly one type")
        type_name = codes.pop()
        children = core_definition(type_name)["snapshot"]["element"][1:]
        inserted = []
        for child in children:
            child["id"] = element["id"] + child["id"][len(type_name) :]
            child["path"] = element["path"] + child["path"][len(type_name) :]
            inserted.append(child)
        self.elements[position + 1 : position + 1] = inserted


def _check_cardinality(url: str, target: dict[str, Any], diff: dict[str, Any]) -> None:
    low = diff.get("min", target.get("min", 0))
    high = diff.get("max", target.get("max", "*"))
    if low > _max(high):
        raise SnapshotError(f"{url}: {diff['id']} has min {low} above max {high}")
    if "min" in diff and "sliceName" not in target and diff["min"] < target.get("min", 0):
        raise SnapshotError(f"{url}: {diff['id']} lowers min below the base's {target.get('min')}")
    if "max" in diff and _max(diff["max"]) > _max(target.get("max", "*")):
        raise SnapshotError(f"{url}: {diff['id']} raises max above the base's {target.get('max')}")


def _check_types(url: str, target: dict[str, Any], diff: dict[str, Any]) -> None:
    allowed = {t["code"] for t in target.get("type", ())}
    wanted = {t["code"] for t in diff["type"]}
    if allowed and not wanted <= allowed:
        raise SnapshotError(f"{url}: {diff['id']} allows types {sorted(wanted - allowed)} its base does not")


def _merge(url: str, target: dict[str, Any], diff: dict[str, Any]) -> None:
    """Lay one differential element over its snapshot element."""
    _check_cardinality(url, target, diff)
    if "type" in diff:
        _check_types(url, target, diff)
    for key, value in diff.items():
        if key in ("id", "path"):
            continue
        if key == "constraint":
            known = {c["key"] for c in target.get("constraint", ())}
            added = [{**c, "source": c.get("source", url)} for c in value if c["key"] not in known]
            target["constraint"] = target.get("constraint", []) + copy.deepcopy(added)
        elif key in ("alias", "condition"):
            target[key] = list(dict.fromkeys([*target.get(key, ()), *value]))
        elif key == "mapping":
            target[key] = target.get(key, []) + copy.deepcopy(value)
        else:
            if key.startswith(_VALUE_PREFIXES):
                for old in [k for k in target if k.startswith(_VALUE_PREFIXES)]:
                    del target[old]
            target[key] = copy.deepcopy(value)


def generate_snapshot(profile: dict[str, Any], resolve: Resolver = resolve_core) -> list[dict[str, Any]]:
    """The snapshot elements of `profile`: its base's snapshot with the differential applied, keys sorted."""
    url = profile["url"]
    base = resolve(profile["baseDefinition"])
    if base is None or "snapshot" not in base:
        raise SnapshotError(f"{url}: base {profile['baseDefinition']} is unknown or has no snapshot")
    snapshot = _Snapshot(copy.deepcopy(base["snapshot"]["element"]), url)
    for diff in profile["differential"]["element"]:
        if "id" not in diff:
            raise SnapshotError(f"{url}: differential element {diff.get('path')} has no id")
        if _path_of(diff["id"]) != diff["path"]:
            raise SnapshotError(f"{url}: element id {diff['id']} does not match its path {diff['path']}")
        _merge(url, snapshot.elements[snapshot.locate(diff["id"])], diff)
    return [dict(sorted(e.items())) for e in snapshot.elements]


def with_snapshots(profiles: Iterable[dict[str, Any]], resolve: Resolver = resolve_core) -> dict[str, dict[str, Any]]:
    """Copies of `profiles` with regenerated snapshots, by URL; a profile's base among them is done first."""
    pending = {p["url"]: p for p in profiles}
    done: dict[str, dict[str, Any]] = {}

    def build(profile: dict[str, Any], chain: tuple[str, ...]) -> None:
        if profile["url"] in chain:
            raise SnapshotError(f"{profile['url']}: derives from itself through {' -> '.join(chain)}")
        base_url = profile["baseDefinition"]
        if base_url in pending and base_url not in done:
            build(pending[base_url], (*chain, profile["url"]))
        elements = generate_snapshot(profile, lambda url: done.get(url) or resolve(url))
        done[profile["url"]] = {**profile, "snapshot": {"element": elements}}

    for profile in pending.values():
        if profile["url"] not in done:
            build(profile, ())
    return done

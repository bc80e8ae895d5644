"""StructureDefinitions as the validator reads them: snapshots compiled into element trees, by URL.

The registry holds the official base definitions (fhir_node/data/r4/structure-definitions/), the
definitions we carry of the packages our guide depends on (fhir_node/data/packages/: be-core's and
infsec's extensions, checked like ours but never published as ours) and our published profiles and
extensions (profiles/). Nothing here knows any particular profile: a tree is
built from `snapshot.element` ids (`Type.a:slice.b`), so slices hang under the element they slice and
children under their parent, and each element keeps only what validation reads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import Any

from fhir_node.validation.terminology import dependency_resources, resources_in

log = logging.getLogger(__name__)

CORE_PREFIX = "http://hl7.org/fhir/StructureDefinition/"
BASE_DIR = Path(__file__).resolve().parent.parent / "data" / "r4" / "structure-definitions"
PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"
_ABSENT = object()


@dataclass(frozen=True)
class TypeRef:
    """One allowed type of an element, with the profiles it must meet and, for references, the targets."""

    code: str
    profiles: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Constraint:
    key: str
    severity: str
    human: str
    expression: str


@dataclass(frozen=True)
class Slicing:
    discriminators: tuple[tuple[str, str], ...]  # (type, path)
    ordered: bool
    rules: str


@dataclass(eq=False)
class Element:
    """One snapshot element; `children` by element name (`value[x]`), `slices` in definition order."""

    id: str
    path: str
    min: int
    max: int | None  # None: unbounded
    types: tuple[TypeRef, ...]
    fixed: Any = _ABSENT
    pattern: Any = _ABSENT
    binding: tuple[str, str] | None = None  # (strength, value set URL) for required and extensible only
    constraints: tuple[Constraint, ...] = ()
    slicing: Slicing | None = None
    slice_name: str | None = None
    content_reference: str | None = None
    children: dict[str, Element] = field(default_factory=dict)
    slices: list[Element] = field(default_factory=list)

    @cached_property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    @property
    def max_text(self) -> str:
        return "*" if self.max is None else str(self.max)

    def has_fixed(self) -> bool:
        return self.fixed is not _ABSENT

    def has_pattern(self) -> bool:
        return self.pattern is not _ABSENT

    def type_codes(self) -> tuple[str, ...]:
        return tuple(t.code for t in self.types)


@dataclass(eq=False)
class Definition:
    """A compiled StructureDefinition: its root element, every element by id, where it comes from."""

    url: str
    type: str
    derivation: str
    root: Element
    by_id: dict[str, Element]
    contexts: tuple[tuple[str, str], ...]  # extension contexts: (type, expression)

    @property
    def is_base(self) -> bool:
        return self.derivation == "specialization"


def _element(raw: dict[str, Any]) -> Element:
    fixed = next((v for k, v in raw.items() if k.startswith("fixed")), _ABSENT)
    pattern = next((v for k, v in raw.items() if k.startswith("pattern")), _ABSENT)
    binding = raw.get("binding", {})
    slicing = raw.get("slicing")
    return Element(
        id=raw.get("id") or raw["path"],
        path=raw["path"],
        min=int(raw.get("min", 0)),
        max=None if raw.get("max", "*") == "*" else int(raw["max"]),
        types=tuple(
            TypeRef(t["code"], tuple(t.get("profile", ())), tuple(t.get("targetProfile", ())))
            for t in raw.get("type", ())
        ),
        fixed=fixed,
        pattern=pattern,
        binding=(binding["strength"], binding["valueSet"].split("|")[0])
        if binding.get("strength") in ("required", "extensible") and binding.get("valueSet")
        else None,
        constraints=tuple(
            Constraint(c["key"], c.get("severity", "error"), c.get("human", ""), c["expression"])
            for c in raw.get("constraint", ())
            if c.get("expression")
        ),
        slicing=Slicing(
            tuple((d["type"], d["path"]) for d in slicing.get("discriminator", ())),
            bool(slicing.get("ordered")),
            slicing.get("rules", "open"),
        )
        if slicing
        else None,
        slice_name=raw.get("sliceName"),
        content_reference=raw.get("contentReference"),
    )


def compile_definition(sd: dict[str, Any]) -> Definition:
    """Build the element tree of a StructureDefinition's snapshot (which must exist)."""
    by_id: dict[str, Element] = {}
    root: Element | None = None
    for raw in sd["snapshot"]["element"]:
        element = _element(raw)
        by_id[element.id] = element
        if "." not in element.id:
            root = element
            continue
        prefix, last = element.id.rsplit(".", 1)
        if ":" in last:
            name, slice_name = last.split(":", 1)
            sliced = f"{prefix}.{name}" if "/" not in slice_name else f"{prefix}.{name}:{slice_name.rsplit('/', 1)[0]}"
            by_id[sliced].slices.append(element)
        else:
            by_id[prefix].children[last] = element
    if root is None:
        raise ValueError(f"StructureDefinition {sd.get('url')} has no root element in its snapshot")
    return Definition(
        url=sd["url"],
        type=sd["type"],
        derivation=sd.get("derivation", "specialization" if sd["url"] == CORE_PREFIX + sd["type"] else "constraint"),
        root=root,
        by_id=by_id,
        contexts=tuple((c.get("type", ""), c.get("expression", "")) for c in sd.get("context", ())),
    )


class Registry:
    """StructureDefinitions by canonical URL, compiled on first use; base definitions also by type."""

    def __init__(self, base: Iterable[dict[str, Any]], published: Iterable[dict[str, Any]] = ()) -> None:
        self._raw: dict[str, tuple[dict[str, Any], bool]] = {}
        self._compiled: dict[str, Definition] = {}
        self._core_keys: frozenset[str] | None = None
        for sd in base:
            self.add(sd)
        for sd in published:
            self.add(sd, published=True)

    def add(self, sd: dict[str, Any], published: bool = False) -> None:
        """Register a StructureDefinition (with a snapshot); a later one replaces the same URL."""
        if sd.get("resourceType") != "StructureDefinition" or "snapshot" not in sd:
            log.warning("ignoring %s: not a StructureDefinition with a snapshot", sd.get("url") or sd.get("id"))
            return
        self._raw[sd["url"]] = (sd, published)
        self._compiled.pop(sd["url"], None)
        self._core_keys = None

    def get(self, url: str) -> Definition | None:
        """The definition at a canonical URL (a `|version` suffix is ignored), or None when unknown."""
        found = self._compiled.get(url)  # asked for each element a validation walks: the common case first
        if found is not None:
            return found
        url = url.split("|")[0]
        if url not in self._compiled:
            if url not in self._raw:
                return None
            self._compiled[url] = compile_definition(self._raw[url][0])
        return self._compiled[url]

    def base(self, type_name: str) -> Definition | None:
        """The official definition of a type (Patient, Period...), when it is held here."""
        return self.get(CORE_PREFIX + type_name)

    def published(self, type_name: str | None = None) -> list[str]:
        """Our profiles (not extensions), optionally of one resource type: the CapabilityStatement's list."""
        return sorted(
            url
            for url, (sd, ours) in self._raw.items()
            if ours and sd.get("type") != "Extension" and type_name in (None, sd.get("type"))
        )

    @property
    def core_keys(self) -> frozenset[str]:
        """Constraint keys of the base definitions: checked in the core pass, not again per profile."""
        if self._core_keys is None:
            self._core_keys = frozenset(
                c["key"]
                for sd, _ in self._raw.values()
                if sd.get("derivation") == "specialization"
                for e in sd["snapshot"]["element"]
                for c in e.get("constraint", ())
            )
        return self._core_keys


@cache
def registry() -> Registry:
    """The process-wide registry: official base definitions and our dependencies', then ours from profiles/."""
    return Registry(
        [
            *resources_in(sorted(BASE_DIR.glob("*.json"))),
            *(r for r in dependency_resources() if r.get("resourceType") == "StructureDefinition"),
        ],
        (
            r
            for r in resources_in(sorted(PROFILES_DIR.glob("*.json")))
            if r.get("resourceType") == "StructureDefinition"
        ),
    )

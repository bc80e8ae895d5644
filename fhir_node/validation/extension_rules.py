"""Extensions as HL7's validator judges them when asked to validate: an extension must have a definition the
validator can find, and an official R4 extension may only be used where its context of use allows.

R4 (extensibility.html): an extension's `url` identifies its definition, and a definition's `context` says
where it may be used. HL7's validator reports an extension whose definition it cannot find as an error
("could not be found, so is not allowed here"). Here, in `validate()` (the CLI, `$validate`):
- the node's own definitions (profiles/) are checked fully by the core pass (profile.py), not here;
- official R4 extensions (data/r4/extensions.json, from the R4 package) are known: their contexts are
  checked here;
- an extension under a canonical base of a package our ImplementationGuide depends on, or published by
  HL7 (hl7.org/fhir/...: the extensions pack, cross-version extensions, tools) is known to exist but not
  held here: the core pass warns that it is not checked;
- any other URL is an error.

Writes are not judged by these rules (a node refusing every extension it does not know would refuse real
vendors' data): they keep the core pass's warning.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from fhir_node.outcome import Issue, error
from fhir_node.validation.definitions import PROFILES_DIR, Registry
from fhir_node.validation.structure import element_children

_EXTENSIONS_FILE = Path(__file__).resolve().parent.parent / "data" / "r4" / "extensions.json"
#: Where HL7 publishes extensions beyond the R4 package (extensions pack, cross-version, tools IG).
_HL7_PUBLISHED = ("http://hl7.org/fhir/",)
#: Contexts R4 states wrongly, as HL7's validator corrects them (jira FHIR-13328: the R4 package itself puts
#: this one on ElementDefinition.type, though its definition says ElementDefinition.type.code).
_CONTEXT_ERRATA = {
    "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type": ("ElementDefinition.type",),
}
#: Profiles of Quantity: an extension allowed on Quantity is allowed on them.
_QUANTITY_PROFILES = frozenset({"Age", "Count", "Distance", "Duration", "MoneyQuantity", "SimpleQuantity"})


@cache
def official_extensions() -> dict[str, list[tuple[str, str]]]:
    """The official R4 extensions' contexts of use, (type, expression) pairs, by URL."""
    data = orjson.loads(_EXTENSIONS_FILE.read_bytes())
    return {url: [(kind, expression) for kind, expression in contexts] for url, contexts in data.items()}


@cache
def _dependency_bases() -> tuple[str, ...]:
    """The canonical bases of the packages our ImplementationGuides depend on (`.../ImplementationGuide/x`
    gives `.../`): their extensions are known to exist, though not carried here."""
    bases = []
    for path in sorted(PROFILES_DIR.glob("ImplementationGuide-*.json")):
        for dependency in orjson.loads(path.read_bytes()).get("dependsOn", ()):
            uri = dependency.get("uri", "")
            if "/ImplementationGuide/" in uri:
                bases.append(uri.split("/ImplementationGuide/")[0] + "/")
    return tuple(bases)


@dataclass(frozen=True)
class _Holder:
    """The element carrying extensions: its path in the resource, its path in its data type (for a child
    of a data type: `HumanName.family`), its type or backbone name, and whether it is a resource."""

    path: str
    local: str
    type: str | None
    resource: bool = False
    extension_url: str | None = None


def extension_rules(resource: dict[str, Any], registry: Registry) -> list[Issue]:
    """Every unknown or misplaced extension in `resource` and the resources it contains."""
    rt = resource.get("resourceType", "")
    return list(_walk(resource, _Holder(rt, rt, rt, True), rt, registry))


def _walk(value: dict[str, Any], holder: _Holder, where: str, registry: Registry) -> Iterator[Issue]:
    for modifier in (False, True):
        key = "modifierExtension" if modifier else "extension"
        for i, extension in enumerate(value.get(key, ()) if isinstance(value.get(key), list) else ()):
            if isinstance(extension, dict):
                at = f"{where}.{key}[{i}]"
                yield from _judge(extension, holder, at, registry)
                url = extension.get("url")
                inner = _Holder(f"{holder.path}.extension", "Extension", "Extension", False, url)
                yield from _walk(extension, inner, at, registry)
    children = element_children(holder.type or "")
    for key, child in value.items():
        if key in ("extension", "modifierExtension"):
            continue
        if isinstance(child, dict) and "resourceType" in child:  # contained, Bundle entries, parameters
            rt = child["resourceType"]
            yield from _walk(child, _Holder(rt, rt, rt, True), f"{where}.{key}", registry)
            continue
        name, type_name = children.get(key, (key.removeprefix("_"), None))
        type_name = None if key.startswith("_") else type_name  # a primitive's extensions: its type unknown here
        path = f"{holder.path}.{name}"
        local = path if holder.resource or "_" in (holder.type or "") else f"{holder.type}.{name}"
        items = child if isinstance(child, list) else [child]
        for i, item in enumerate(items):
            if isinstance(item, dict):
                at = f"{where}.{key}[{i}]" if isinstance(child, list) else f"{where}.{key}"
                resource = isinstance(item.get("resourceType"), str)
                if resource:
                    rt = item["resourceType"]
                    yield from _walk(item, _Holder(rt, rt, rt, True), at, registry)
                else:
                    yield from _walk(item, _Holder(path, local, type_name), at, registry)


def _judge(extension: dict[str, Any], holder: _Holder, at: str, registry: Registry) -> Iterator[Issue]:
    url = extension.get("url")
    if not isinstance(url, str) or ":" not in url or registry.get(url) is not None:
        return  # a part of a complex extension, or one of ours (checked by the core pass)
    contexts = official_extensions().get(url)
    if contexts is None:
        if not url.startswith(_HL7_PUBLISHED + _dependency_bases()):
            yield error("structure", f"The extension {url} could not be found, so it is not allowed here", at)
        return
    if any(kind == "fhirpath" for kind, _ in contexts) or not contexts:
        return  # a FHIRPath context is not judged here
    allowed = [expression for _, expression in contexts] + list(_CONTEXT_ERRATA.get(url, ()))
    if {"Element", "Any"} & set(allowed):
        return  # allowed everywhere, resources included, as HL7's validator reads it
    if holder.type is None and any(a[:1].islower() for a in allowed):
        return  # a context naming a primitive type, on a primitive whose type is not known here
    if not set(_context_names(holder)) & {a.replace("[x]", "") for a in allowed}:
        text = f"The extension {url} is not allowed on {holder.path} (its contexts: {', '.join(allowed)})"
        yield error("structure", text, at)


def _context_names(holder: _Holder) -> Iterator[str]:
    """What a context of use may name for the holder: its paths, its type and the types it derives from."""
    yield from (holder.path, holder.local)
    if holder.resource:
        yield from ("Resource", "DomainResource")
        return
    if holder.type is None:
        return  # a primitive: its type is not known here, so its name is not offered
    yield holder.type
    if "_" in holder.type:
        yield "BackboneElement"
    if holder.type in _QUANTITY_PROFILES:
        yield "Quantity"
    if holder.extension_url:
        yield holder.extension_url

"""Extensions as HL7's validator judges them when asked to validate: an extension must have a definition the
validator can find, and an official R4 extension may only be used where its context of use allows.

R4 (extensibility.html): an extension's `url` identifies its definition, and a definition's `context` says
where it may be used. HL7's validator reports an extension whose definition it cannot find as an error
("could not be found, so is not allowed here"). Here, in `validate()` (the CLI, `$validate`):
- the definitions the node holds (profiles/, and those it carries from be-core and infsec) are checked fully
  by the core pass (profile.py), not here;
- official R4 extensions (data/r4/extensions.json, from the R4 package) are known: their contexts are
  checked here;
- an extension under the canonical base of our ImplementationGuide or of a package it depends on, or published by
  HL7 beyond R4 where HL7's validator loads it (the extensions pack, cross-version extensions, tools) is
  known to exist but not held here: the core pass warns that it is not checked;
- so are those on the example hosts of the specification (example.org, acme.com) or DICOM's (nema.org),
  which HL7's validator lets pass;
- any other URL is an error.

Writes are not judged by these rules (a node refusing every extension it does not know would refuse real
vendors' data): they keep the core pass's warning.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from fhir_node.outcome import Issue, error
from fhir_node.validation.definitions import PROFILES_DIR, Registry
from fhir_node.validation.structure import element_children

_EXTENSIONS_FILE = Path(__file__).resolve().parent.parent / "data" / "r4" / "extensions.json"
#: Where HL7 publishes extensions beyond the R4 package, which HL7's validator loads itself: the extensions
#: pack, the tools IG, cross-version extensions (`http://hl7.org/fhir/5.0/StructureDefinition/...`). Those
#: of other HL7 guides (`http://hl7.org/fhir/uv/sdc/...`) it does not know either.
_HL7_PUBLISHED = re.compile(r"http://hl7\.org/fhir/(?:tools/|\d\.\d/)?StructureDefinition/")
#: Hosts whose extensions HL7's validator lets pass unresolved: the example domains of the specification's
#: examples, and DICOM's (NEMA) attributes used as extensions.
_EXAMPLE_HOSTS = ("example.org", "acme.com", "nema.org")
#: Profiles of Quantity: an extension allowed on Quantity is allowed on them.
_QUANTITY_PROFILES = frozenset({"Age", "Count", "Distance", "Duration", "MoneyQuantity", "SimpleQuantity"})


@cache
def official_extensions() -> dict[str, list[tuple[str, str]]]:
    """The official R4 extensions' contexts of use, (type, expression) pairs, by URL."""
    data = orjson.loads(_EXTENSIONS_FILE.read_bytes())
    return {url: [(kind, expression) for kind, expression in contexts] for url, contexts in data.items()}


@cache
def _guide_bases() -> tuple[str, ...]:
    """The canonical bases of our ImplementationGuides and of the packages they depend on
    (`.../ImplementationGuide/x` gives `.../`): extensions under them are known to exist, though not all
    are carried here (be-core's and infsec's other extensions)."""
    bases = []
    for path in sorted(PROFILES_DIR.glob("ImplementationGuide-*.json")):
        guide = orjson.loads(path.read_bytes())
        for uri in [guide.get("url", ""), *(d.get("uri", "") for d in guide.get("dependsOn", ()))]:
            if "/ImplementationGuide/" in uri:
                bases.append(uri.split("/ImplementationGuide/")[0] + "/")
    return tuple(bases)


@dataclass(frozen=True)
class _Holder:
    """The element carrying extensions: its path in the resource, its logical path (a recursive element by
    the element that defines it: `Questionnaire.item` for `Questionnaire.item.item`; a data type's child by
    the type: `HumanName.family`), its type or backbone name, and whether it is a resource."""

    path: str
    local: str
    type: str | None
    resource: bool = False
    extension_url: str | None = None


def extension_rules(resource: dict[str, Any], registry: Registry) -> list[Issue]:
    """Every unknown or misplaced extension in `resource` and the resources it contains."""
    return [
        issue for extension, holder, at in extensions_in(resource) for issue in _judge(extension, holder, at, registry)
    ]


def extensions_in(resource: dict[str, Any]) -> Iterator[tuple[dict[str, Any], _Holder, str]]:
    """(extension, the element holding it, location) of every extension in `resource` and the resources
    it carries."""
    rt = resource.get("resourceType", "")
    yield from _walk(resource, _Holder(rt, rt, rt, True), rt, {})


def _walk(
    value: dict[str, Any], holder: _Holder, where: str, defined: dict[str, str]
) -> Iterator[tuple[dict[str, Any], _Holder, str]]:
    """`defined`: the logical path of each backbone type met on the way down (recursion ends there)."""
    for key in ("extension", "modifierExtension"):
        for i, extension in enumerate(value.get(key, ()) if isinstance(value.get(key), list) else ()):
            if isinstance(extension, dict):
                at = f"{where}.{key}[{i}]"
                yield extension, holder, at
                inner = _Holder(f"{holder.path}.extension", "Extension", "Extension", False, extension.get("url"))
                yield from _walk(extension, inner, at, defined)
    children = element_children(holder.type or "")
    for key, child in value.items():
        if key in ("extension", "modifierExtension"):
            continue
        name, type_name = children.get(key, (key.removeprefix("_"), None))
        type_name = None if key.startswith("_") else type_name  # a primitive's extensions: its type unknown here
        path = f"{holder.path}.{name}"
        local = f"{holder.local}.{name}" if holder.resource or "_" in (holder.type or "") else f"{holder.type}.{name}"
        if type_name and "_" in type_name:
            local = defined.setdefault(type_name, local)
        items = child if isinstance(child, list) else [child]
        for i, item in enumerate(items):
            if isinstance(item, dict):
                at = f"{where}.{key}[{i}]" if isinstance(child, list) else f"{where}.{key}"
                if isinstance(item.get("resourceType"), str):  # contained, Bundle entries, parameters
                    rt = item["resourceType"]
                    yield from _walk(item, _Holder(rt, rt, rt, True), at, {})
                else:
                    yield from _walk(item, _Holder(path, local, type_name), at, defined)


def _judge(extension: dict[str, Any], holder: _Holder, at: str, registry: Registry) -> Iterator[Issue]:
    url = extension.get("url")
    if not isinstance(url, str) or ":" not in url or registry.get(url) is not None:
        return  # a part of a complex extension, or one of ours (checked by the core pass)
    contexts = official_extensions().get(url)
    if contexts is None:
        known_source = _HL7_PUBLISHED.match(url) or url.startswith(_guide_bases()) or _example_host(url)
        if not known_source:
            yield error("structure", f"The extension {url} could not be found, so it is not allowed here", at)
        return
    if not allowed_at(contexts, holder):
        text = (
            f"The extension {url} is not allowed on {holder.path} (its contexts: {', '.join(e for _, e in contexts)})"
        )
        yield error("structure", text, at)


def allowed_at(contexts: list[tuple[str, str]], holder: _Holder) -> bool:
    """Whether contexts of use allow an extension on `holder` (a FHIRPath context, or a primitive whose
    type is not known here while a context names a primitive type, is given the benefit of the doubt)."""
    allowed = {expression.replace("[x]", "") for _, expression in contexts}
    if not contexts or any(kind == "fhirpath" for kind, _ in contexts) or {"Element", "Any"} & allowed:
        return True  # `Element`: allowed everywhere, resources included, as HL7's validator reads it
    if holder.type is None and any(a[:1].islower() for a in allowed):
        return True
    return bool(set(_context_names(holder)) & allowed)


def official_misplacements(
    resources: Iterable[dict[str, Any]], contexts: dict[str, list[tuple[str, str]]]
) -> dict[str, set[str]]:
    """Where the official R4 package itself uses its extensions outside their stated contexts, by URL
    (logical paths): the extraction script adds these as contexts, since what the specification publishes
    passes HL7's validator (`structuredefinition-normative-version` on ValueSets, `translation` on
    expansion contents...)."""
    found: dict[str, set[str]] = {}
    for resource in resources:
        for extension, holder, _ in extensions_in(resource):
            url = extension.get("url")
            if url in contexts and not allowed_at(contexts[url], holder):
                found.setdefault(url, set()).add(holder.local)
    return found


def _example_host(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return any(host == h or host.endswith("." + h) for h in _EXAMPLE_HOSTS)


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

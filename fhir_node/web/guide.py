"""The published guide as readable pages: one per profile (elements, cardinalities, types, bindings,
invariants, an example) and an index. The same templates render the node's `/profiles` pages and the
static pages `fhir-node package` puts in the npm package's `other/` folder.

The guide itself comes from `fhir_node.web.publication`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fhir_node.validation.definitions import Constraint
from fhir_node.web.render import render


@dataclass(frozen=True)
class ElementRow:
    """One snapshot element, as a line of the profile's table."""

    depth: int
    name: str
    path: str
    cardinality: str
    types: str
    flags: str
    short: str
    prohibited: bool
    values: list[str] = field(default_factory=list)
    binding: tuple[str, str] | None = None
    constraints: list[Constraint] = field(default_factory=list)


def element_rows(profile: dict[str, Any]) -> list[ElementRow]:
    """The profile's snapshot as table rows; only the profile's own invariants (not R4's ele-1 and kin)."""
    return [_row(element, profile["url"]) for element in profile["snapshot"]["element"]]


def _row(element: dict[str, Any], url: str) -> ElementRow:
    flags = " ".join(f for f, on in (("MS", element.get("mustSupport")), ("?!", element.get("isModifier"))) if on)
    binding = element.get("binding")
    own = [c for c in element.get("constraint", ()) if c.get("source") == url or c["key"].startswith("bihr-")]
    return ElementRow(
        depth=element["id"].count("."),
        name=element["id"].rsplit(".", 1)[-1],
        path=element["id"],
        cardinality=f"{element.get('min', 0)}..{element.get('max', '*')}",
        types=_types(element),
        flags=flags,
        short=element.get("short", ""),
        prohibited=element.get("max") == "0",
        values=_values(element),
        binding=(binding["strength"], binding["valueSet"]) if binding and "valueSet" in binding else None,
        constraints=[Constraint(c["key"], c["severity"], c["human"], c.get("expression", "")) for c in own],
    )


def _types(element: dict[str, Any]) -> str:
    parts = []
    for t in element.get("type", ()):
        targets = [u.rsplit("/", 1)[-1] for u in [*t.get("targetProfile", ()), *t.get("profile", ())]]
        code = t["code"].rsplit(".", 1)[-1] if t["code"].startswith("http") else t["code"]
        parts.append(code + (f"({' | '.join(targets)})" if targets else ""))
    return ", ".join(parts)


def _values(element: dict[str, Any]) -> list[str]:
    """Fixed and pattern values, and how the element is sliced."""
    lines = [
        f"{key}: {json.dumps(value, ensure_ascii=False)}"
        for key, value in element.items()
        if key.startswith(("fixed", "pattern"))
    ]
    if "slicing" in element:
        slicing = element["slicing"]
        by = ", ".join(f"{d['type']} {d['path']}" for d in slicing.get("discriminator", ()))
        lines.append(f"sliced by {by} ({slicing['rules']})")
    return lines


def profile_page(profile: dict[str, Any], *, example: str | None = None, package: str | None = None) -> str:
    """A profile's page. Without `package` (the tarball's file name) it is the standalone page of the
    package's `other/` folder, with no node around it."""
    return render(
        "profile.html",
        standalone=package is None,
        profile=profile,
        rows=element_rows(profile),
        example=example,
        package=package,
    )


def index_page(guide: dict[str, Any], resources: dict[str, dict[str, Any]], *, package: str | None = None) -> str:
    """The guide's description and its resources, profiles linked to their pages."""
    listed = [resources[name] for name in sorted(resources)]
    return render("guide.html", standalone=package is None, guide=guide, resources=listed, package=package)

"""The search-parameter registry: official R4 SearchParameters plus ours from profiles/, per served type."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from fhir_node.registry import KINDS

DATA = Path(__file__).resolve().parent.parent / "data" / "r4" / "search-parameters.json"
PROFILES = Path(__file__).resolve().parent.parent.parent / "profiles"

#: Modifiers each parameter type accepts (R4 search, 3.1.1.5), beyond `:missing` which all accept. Token
#: :above, :below, :in and :not-in need a terminology server; refused rather than read as plain equality.
MODIFIERS: dict[str, frozenset[str]] = {
    "token": frozenset({"not", "text", "of-type"}),
    "string": frozenset({"exact", "contains"}),
    "uri": frozenset({"above", "below"}),
    "reference": frozenset({"identifier"}),
    "date": frozenset(),
    "number": frozenset(),
    "quantity": frozenset(),
    "composite": frozenset(),
    "special": frozenset(),
}


@dataclass(frozen=True)
class SearchParam:
    """One search parameter as it applies to one resource type; `expression` is trimmed to that type."""

    code: str
    type: str
    url: str
    expression: str
    targets: tuple[str, ...] = ()
    components: tuple[tuple[str, str], ...] = ()  # (definition canonical, expression relative to the match)
    documentation: str = field(default="", compare=False)


def _split_union(expression: str) -> list[str]:
    """Split a FHIRPath expression at its top-level `|` (not inside parentheses or quotes)."""
    parts: list[str] = []
    depth, start, quote = 0, 0, False
    for i, ch in enumerate(expression):
        if ch == "'":
            quote = not quote
        elif quote:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


def for_type(expression: str, res_type: str) -> str:
    """The part of a multi-type expression that applies to `res_type`, with Resource./DomainResource.
    rewritten to the type (the FHIRPath engine does not treat them as supertypes)."""
    kept = []
    for part in _split_union(expression):
        bare = part.lstrip("(")
        head = re.match(r"[A-Za-z]+", bare)
        name = head.group(0) if head else ""
        if name in ("Resource", "DomainResource"):
            kept.append(part.replace(f"{name}.", f"{res_type}.", 1))
        elif name == res_type:
            kept.append(part)
    return " | ".join(kept)


class Registry:
    """Search parameters per served type, by code; built once per process from definitions on disk."""

    def __init__(self, definitions: list[dict[str, Any]]) -> None:
        self.params: dict[str, dict[str, SearchParam]] = {t: {} for t in KINDS}
        for d in definitions:
            for base in d.get("base", []):
                types = list(KINDS) if base in ("Resource", "DomainResource") else [base]
                for res_type in types:
                    if res_type in self.params:
                        self._add(res_type, d)

    def _add(self, res_type: str, d: dict[str, Any]) -> None:
        expression = for_type(d.get("expression", ""), res_type)
        if not expression:
            return
        targets = tuple(d.get("target", []))
        components = tuple((c["definition"], c["expression"]) for c in d.get("component", []))
        self.params[res_type][d["code"]] = SearchParam(
            d["code"], d["type"], d["url"], expression, targets, components, d.get("description", "")
        )

    def get(self, res_type: str, code: str) -> SearchParam | None:
        return self.params.get(res_type, {}).get(code)

    def of(self, res_type: str) -> dict[str, SearchParam]:
        return self.params.get(res_type, {})


def load_definitions() -> list[dict[str, Any]]:
    """The official definitions, then ours (`profiles/SearchParameter-*.json`), which win on the same code."""
    raw = orjson.loads(DATA.read_bytes())
    official = [e["resource"] for e in raw["entry"]] if isinstance(raw, dict) else raw
    ours = [orjson.loads(p.read_bytes()) for p in sorted(PROFILES.glob("SearchParameter-*.json"))]
    return official + ours


@cache
def registry() -> Registry:
    """The process-wide registry (definitions are files shipped with the node, identical on every worker)."""
    return Registry(load_definitions())

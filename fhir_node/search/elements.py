"""_summary and _elements: subsets of a stored resource, tagged SUBSETTED as R4 requires. Only these
parse the stored bytes; a plain search sends them untouched."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import orjson

_RULES = Path(__file__).resolve().parent.parent / "data" / "r4"
_SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
_ALWAYS = ("resourceType", "id", "meta")


@cache
def _summary_elements() -> dict[str, frozenset[str]]:
    """Top-level elements flagged isSummary in the R4 definitions, per resource type."""
    raw = orjson.loads((_RULES / "summary-elements.json").read_bytes())
    return {t: frozenset(names) for t, names in raw.items()}


@cache
def _structure() -> dict[str, Any]:
    return orjson.loads((_RULES / "structure-rules.json").read_bytes())


@cache
def _mandatory() -> dict[str, frozenset[str]]:
    """Top-level elements with min >= 1, which a subset must keep."""
    return {t: frozenset(names) for t, names in _structure()["required"].items()}


@cache
def _choices() -> dict[str, dict[str, frozenset[str]]]:
    """Per type, each top-level choice element (`deceased[x]`) and its JSON names (`deceasedBoolean`, ...)."""
    return {t: {c: frozenset(names) for c, names in found.items()} for t, found in _structure()["choices"].items()}


def asks(summary: str | None, elements: list[str]) -> bool:
    """Whether `_summary` / `_elements` ask for less than the whole resource."""
    return summary not in (None, "false") or bool(elements)


def shape(content: bytes, summary: str | None, elements: list[str]) -> bytes:
    """The resource as `_summary` / `_elements` ask; the stored bytes themselves when nothing is asked."""
    if not asks(summary, elements):
        return content
    resource = orjson.loads(content)
    res_type = resource["resourceType"]
    keep: frozenset[str] | None
    if elements:
        keep = frozenset(_defined_name(res_type, e) for e in elements) | _mandatory().get(res_type, frozenset())
    elif summary == "true":
        keep = _summary_elements().get(res_type, frozenset())
    elif summary == "text":
        keep = frozenset({"text"}) | _mandatory().get(res_type, frozenset())
    else:  # data: everything but the narrative
        keep = None
    subset = {
        k: v for k, v in resource.items() if k in _ALWAYS or (k != "text" if keep is None else _kept(res_type, k, keep))
    }
    meta: dict[str, Any] = subset.setdefault("meta", {})
    meta["tag"] = [*meta.get("tag", []), _SUBSETTED]
    return orjson.dumps(subset)


def _defined_name(res_type: str, name: str) -> str:
    """`_elements=deceased` asks for the choice element the definitions call `deceased[x]`."""
    return f"{name}[x]" if f"{name}[x]" in _choices().get(res_type, {}) else name


def _kept(res_type: str, key: str, keep: frozenset[str]) -> bool:
    """Choice elements are listed as `value[x]` but appear as `valueDateTime` in JSON (and `policy` is not
    `policyRule`: only the choice's own JSON names count)."""
    choices = _choices().get(res_type, {})
    return key in keep or any(key in choices.get(k, ()) for k in keep if k.endswith("[x]"))

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
def _mandatory() -> dict[str, frozenset[str]]:
    """Top-level elements with min >= 1, which a subset must keep."""
    raw = orjson.loads((_RULES / "structure-rules.json").read_bytes())["required"]
    return {t: frozenset(names) for t, names in raw.items()}


def shape(content: bytes, summary: str | None, elements: list[str]) -> bytes:
    """The resource as `_summary` / `_elements` ask; the stored bytes themselves when nothing is asked."""
    if summary in (None, "false") and not elements:
        return content
    resource = orjson.loads(content)
    res_type = resource["resourceType"]
    keep: frozenset[str] | None
    if elements:
        keep = frozenset(elements) | _mandatory().get(res_type, frozenset())
    elif summary == "true":
        keep = _summary_elements().get(res_type, frozenset())
    elif summary == "text":
        keep = frozenset({"text"}) | _mandatory().get(res_type, frozenset())
    else:  # data: everything but the narrative
        keep = None
    subset = {k: v for k, v in resource.items() if k in _ALWAYS or (k != "text" if keep is None else _kept(k, keep))}
    meta: dict[str, Any] = subset.setdefault("meta", {})
    meta["tag"] = [*meta.get("tag", []), _SUBSETTED]
    return orjson.dumps(subset)


def _kept(key: str, keep: frozenset[str]) -> bool:
    """Choice elements are listed as `value[x]` in definitions but appear as `valueDateTime` in JSON."""
    return key in keep or any(k.endswith("[x]") and key.startswith(k[:-3]) for k in keep)

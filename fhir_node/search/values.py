"""Turning the FHIR values a search expression selects into index-row values, one kind per table."""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation
from typing import Any

from fhir_node.datetimes import MAX, MIN, date_range

_REF = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?")
_STRING_PARTS = (
    "text",
    "family",
    "given",
    "prefix",
    "suffix",
    "line",
    "city",
    "district",
    "state",
    "postalCode",
    "country",
)


def fold(text: str) -> str:
    """Case- and accent-insensitive form for string search (R4: 'é' matches 'e', 'A' matches 'a')."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()[:255]


def unwrap_extension(value: Any) -> Any:
    """An Extension stands for its value[x]: a parameter on `extension('url')` searches what it holds."""
    if isinstance(value, dict) and "url" in value:
        held = [k for k in value if k not in ("id", "url")]
        if len(held) == 1 and held[0].startswith("value") and held[0][5:6].isupper():
            return value[held[0]]
    return value


def tokens(value: Any) -> list[dict[str, Any]]:
    """system|code rows for code, boolean, Coding, CodeableConcept, Identifier, ContactPoint values."""
    if isinstance(value, bool):
        return [{"system": None, "code": "true" if value else "false", "text": None}]
    if isinstance(value, str):
        return [{"system": None, "code": value[:255], "text": None}]
    if not isinstance(value, dict):
        return []
    if "coding" in value or ("text" in value and "value" not in value and "code" not in value):
        rows = [row for c in value.get("coding", []) for row in tokens(c)]
        if "text" in value:
            rows.append({"system": None, "code": None, "text": fold(value["text"])})
        return rows
    if "value" in value:  # Identifier or ContactPoint
        types = [c for c in value.get("type", {}).get("coding", [])] or [{}]
        return [
            {
                "system": value.get("system"),
                "code": str(value["value"])[:255],
                "text": fold(value["type"]["text"]) if "text" in value.get("type", {}) else None,
                "type_system": t.get("system"),
                "type_code": t.get("code"),
            }
            for t in types
        ]
    if "code" in value or "system" in value:  # Coding
        return [{"system": value.get("system"), "code": value.get("code"), "text": _maybe_fold(value.get("display"))}]
    return []


def _maybe_fold(text: str | None) -> str | None:
    return fold(text) if text else None


def strings(value: Any) -> list[dict[str, Any]]:
    """Rows for a string, or for each text part of a HumanName or Address."""
    if isinstance(value, str):
        return [{"value": fold(value), "exact": value[:255]}]
    if isinstance(value, dict):
        parts = [value[k] for k in _STRING_PARTS if k in value]
        flat = [p for part in parts for p in (part if isinstance(part, list) else [part])]
        return [row for p in flat if isinstance(p, str) for row in strings(p)]
    return []


def dates(value: Any) -> list[dict[str, Any]]:
    """[low, high] for a date/dateTime/instant, a Period (open ends open), or a Timing's events."""
    if isinstance(value, str):
        found = date_range(value)
        return [{"low": found[0], "high": found[1]}] if found else []
    if not isinstance(value, dict):
        return []
    if "start" in value or "end" in value:
        start = date_range(value["start"]) if "start" in value else None
        end = date_range(value["end"]) if "end" in value else None
        return [{"low": start[0] if start else MIN, "high": end[1] if end else MAX}]
    if "event" in value or "repeat" in value:
        rows = [row for e in value.get("event", []) for row in dates(e)]
        bounds = value.get("repeat", {}).get("boundsPeriod")
        return rows + (dates(bounds) if bounds else [])
    return []


def references(value: Any) -> list[dict[str, Any]]:
    """Local targets (Type/id), other URLs and canonicals, and Reference.identifier. A versioned canonical
    (`url|1.0`) has a row without its version too: a search naming no version matches every version."""
    if isinstance(value, str):  # canonical or uri
        urls = dict.fromkeys((value[:1024], value.split("|")[0][:1024]))
        return [{"target_type": None, "target_id": None, "url": u, "id_system": None, "id_value": None} for u in urls]
    if not isinstance(value, dict):
        return []
    rows = []
    ref = value.get("reference")
    if isinstance(ref, str) and not ref.startswith("#"):
        local = _REF.fullmatch(ref)
        rows.append(
            {
                "target_type": local.group(1) if local else None,
                "target_id": local.group(2) if local else None,
                "url": None if local else ref[:1024],
                "id_system": None,
                "id_value": None,
            }
        )
    ident = value.get("identifier")
    if isinstance(ident, dict) and "value" in ident:
        rows.append(
            {
                "target_type": value.get("type"),
                "target_id": None,
                "url": None,
                "id_system": ident.get("system"),
                "id_value": str(ident["value"])[:255],
            }
        )
    return rows


def uris(value: Any) -> list[dict[str, Any]]:
    return [{"uri": value[:1024]}] if isinstance(value, str) else []


def number_range(text: str) -> tuple[Decimal, Decimal, Decimal] | None:
    """value and the range its significant digits imply: 100 is [99.5, 100.5], 1.50 is [1.495, 1.505]."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    half = Decimal(5).scaleb(value.as_tuple().exponent - 1)  # type: ignore[operator]
    return value, value - half, value + half


def numbers(value: Any) -> list[dict[str, Any]]:
    """Rows for a number, or a Quantity (with its system|code, and its unit as a code too)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float | Decimal):
        found = number_range(str(value))
        return [{"value": found[0], "low": found[1], "high": found[2], "system": None, "code": None}] if found else []
    if isinstance(value, dict) and "value" in value:
        base = numbers(value["value"])
        if not base:
            return []
        row = base[0]
        rows = [{**row, "system": value.get("system"), "code": value.get("code")}]
        if value.get("unit") and value.get("unit") != value.get("code"):
            rows.append({**row, "system": None, "code": value["unit"]})
        return rows
    return []


EXTRACTORS = {
    "token": tokens,
    "string": strings,
    "date": dates,
    "reference": references,
    "uri": uris,
    "number": numbers,
    "quantity": numbers,
}

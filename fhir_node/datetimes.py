"""FHIR date, dateTime and instant values as Python datetimes (naive UTC, as the database stores them)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from fhir_node.outcome import fail

_DATETIME = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<time>\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)(?P<tz>Z|[+-]\d{2}:\d{2}))?)?)?"
)


def parse_instant(value: str, name: str) -> datetime:
    """The earliest instant a FHIR date/dateTime/instant denotes, in naive UTC; 400 naming `name` if bad."""
    m = _DATETIME.fullmatch(value)
    if not m:
        raise fail(400, "value", f"{name}: '{value}' is not a FHIR instant (e.g. 2024-01-31T12:00:00Z)", name)
    text = f"{m['y']}-{m['m'] or '01'}-{m['d'] or '01'}"
    if m["time"]:
        time = m["time"] if m["time"].count(":") == 2 else m["time"] + ":00"
        text += f"T{time}{m['tz'].replace('Z', '+00:00')}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise fail(400, "value", f"{name}: '{value}' is not a valid date or time", name) from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed

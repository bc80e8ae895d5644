"""FHIR date, dateTime and instant values as the closed range of instants they denote (naive UTC, as the
database stores them): `2024` covers the whole year, `2024-03-01T10:00:00Z` one second."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from fhir_node.outcome import fail

#: Open ends of a range (a Period without end, say) are stored as these, so comparisons need no NULLs.
MIN = datetime(1, 1, 1)
MAX = datetime(9999, 12, 31, 23, 59, 59, 999999)

_DATETIME = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.(?P<f>\d+))?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_TICK = timedelta(microseconds=1)


def date_range(value: str) -> tuple[datetime, datetime] | None:
    """[low, high] of a FHIR date/dateTime/instant, or None if it is not one. A time without a zone is
    read as UTC (R4 leaves it to the server)."""
    m = _DATETIME.fullmatch(value)
    if not m:
        return None
    try:
        low = datetime(
            int(m["y"]),
            int(m["m"] or 1),
            int(m["d"] or 1),
            int(m["h"] or 0),
            int(m["mi"] or 0),
            int(m["s"] or 0),
            int((m["f"] or "0")[:6].ljust(6, "0")),
        )
    except ValueError:
        return None
    if m["tz"] and m["tz"] != "Z":
        sign = 1 if m["tz"][0] == "+" else -1
        try:
            low -= sign * timedelta(hours=int(m["tz"][1:3]), minutes=int(m["tz"][4:6]))
        except OverflowError:  # within hours of year 1 or 9999: clamp
            low = MIN if sign > 0 else MAX
    try:
        return low, _end(low, m) - _TICK
    except (OverflowError, ValueError):  # the value's range reaches past year 9999
        return low, MAX


def _end(low: datetime, m: re.Match[str]) -> datetime:
    """The first instant after the precision of the value."""
    if m["f"]:
        return low + timedelta(microseconds=10 ** max(0, 6 - len(m["f"])))
    if m["s"]:
        return low + timedelta(seconds=1)
    if m["mi"]:
        return low + timedelta(minutes=1)
    if m["d"]:
        return low + timedelta(days=1)
    if m["m"]:
        year, month = (low.year + 1, 1) if low.month == 12 else (low.year, low.month + 1)
        return low.replace(year=year, month=month)
    return low.replace(year=low.year + 1)


def parse_instant(value: str, name: str) -> datetime:
    """The earliest instant a FHIR date/dateTime/instant denotes; 400 naming parameter `name` if bad."""
    found = date_range(value)
    if found is None:
        raise fail(400, "value", f"{name}: '{value}' is not a FHIR date or instant (e.g. 2024-01-31T12:00:00Z)", name)
    return found[0]

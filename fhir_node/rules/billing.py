"""Billing dates (deliberation 18/053, annex items 7 and 8): an inclusion counts from the 1st of the month
after its start date; an exclusion takes effect at the end of the month after the exclusion date.

The node computes them on every write of a principal inclusion (the one the insurer bills, item 9) and
stores them as the `billing-period` extension (a Period of dates), which the `billing-period` search
parameter indexes: `EpisodeOfCare?billing-period=ge2024-03-01&billing-period=le2024-03-31` lists the
inclusions billable in March 2024. Whatever a client sends in that extension is replaced; information,
cancelled and entered-in-error inclusions carry none. Dates are read as written (the calendar day of
the project, not converted to UTC): `2024-01-31T23:30:00+01:00` starts on 31 January."""

from __future__ import annotations

import calendar
import re
from datetime import date
from typing import Any

from fhir_node.rules.inclusion import Inclusion

BILLING_PERIOD = "https://fhir-node.be/fhir/StructureDefinition/billing-period"
_DATE = re.compile(r"(\d{4})(?:-(\d{2}))?")


def first_billed_day(start: str) -> date:
    """The 1st of the month after the start (a start known to the year only: after its January)."""
    year, month = _year_month(start, 1)
    return date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)


def last_billed_day(end: str) -> date:
    """The last day of the month after the exclusion (known to the year only: after its December)."""
    year, month = _year_month(end, 12)
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return date(year, month, calendar.monthrange(year, month)[1])


def stamped(resource: dict[str, Any]) -> dict[str, Any]:
    """The EpisodeOfCare with the node's billing-period extension (or none), replacing any sent."""
    extensions = [e for e in resource.get("extension", []) if e.get("url") != BILLING_PERIOD]
    inclusion = Inclusion.of("", resource)
    if inclusion.principal and inclusion.held and inclusion.start:
        period = {"start": first_billed_day(inclusion.start).isoformat()}
        if inclusion.end:
            period["end"] = last_billed_day(inclusion.end).isoformat()
        extensions.append({"url": BILLING_PERIOD, "valuePeriod": period})
    out = dict(resource)  # the extension keeps its place among the elements, if it had one
    out["extension"] = extensions
    if not extensions:
        del out["extension"]
    return out


def _year_month(value: str, month_if_unknown: int) -> tuple[int, int]:
    m = _DATE.match(value)
    assert m is not None  # the write was checked against R4's dateTime pattern before
    return int(m.group(1)), int(m.group(2) or month_if_unknown)

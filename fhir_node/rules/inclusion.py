"""What the inclusion rules read of an EpisodeOfCare: its patient reference, status, period, and whether it
is a principal inclusion."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir_node.datetimes import MAX, MIN, date_range

INCLUSION_STATUS = "https://fhir-node.be/fhir/CodeSystem/inclusion-status"
#: Statuses of an inclusion that never was, or no longer is, held: they take no place and bill nothing.
VOID = ("cancelled", "entered-in-error")
#: Statuses of an inclusion still running (besides any with no end, or an end still to come).
RUNNING = ("planned", "waitlist", "active", "onhold")


@dataclass(frozen=True)
class Inclusion:
    """The parts of an EpisodeOfCare the rules read."""

    res_id: str
    status: str
    principal: bool
    start: str | None
    end: str | None
    reference: dict[str, Any]

    @classmethod
    def of(cls, res_id: str, resource: dict[str, Any]) -> Inclusion:
        period = resource.get("period") or {}
        codes = [c for t in resource.get("type", []) for c in t.get("coding", [])]
        principal = any(c.get("system") == INCLUSION_STATUS and c.get("code") == "principal" for c in codes)
        return cls(
            res_id,
            str(resource.get("status", "")),
            principal,
            period.get("start"),
            period.get("end"),
            resource.get("patient") or {},
        )

    @property
    def held(self) -> bool:
        """Whether it takes a place at all (not cancelled, not entered in error)."""
        return self.status not in VOID

    def span(self) -> tuple[datetime, datetime]:
        """The closed range of instants its period covers (an open end runs forever; R4 Period.end is
        inclusive, so ending on a day and starting another on that day overlap)."""
        start = date_range(self.start) if self.start else None
        end = date_range(self.end) if self.end else None
        return start[0] if start else MIN, end[1] if end else MAX

    def overlaps(self, other: Inclusion) -> bool:
        (a_low, a_high), (b_low, b_high) = self.span(), other.span()
        return a_low <= b_high and b_low <= a_high

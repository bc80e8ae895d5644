"""What a results table shows of each resource type: columns as FHIRPath expressions over the resource,
so a column is one line of data, not code."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from fhir_node.registry import CONFORMANCE_TYPES
from fhir_node.search.fhirpath import Evaluator, compile_expression

_REQUESTOR = "agent.where(requestor = true)"
_CONFORMANCE = (("Name", "name"), ("Title", "title"), ("Status", "status"), ("URL", "url"))

COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "EpisodeOfCare": (
        ("Status", "status"),
        ("Inclusion", "type.coding.code"),
        ("Patient", "patient.reference"),
        ("Project", "managingOrganization.reference"),
        ("Start", "period.start"),
        ("End", "period.end"),
    ),
    "Consent": (
        ("Status", "status"),
        ("Decision", "provision.type"),
        ("Purpose", "provision.purpose.code"),
        ("Patient", "patient.reference"),
        ("Recorded", "dateTime"),
    ),
    "Patient": (("Identifier", "identifier.value"), ("Active", "active")),
    "Organization": (("Name", "name"), ("Identifier", "identifier.value")),
    "Practitioner": (("Identifier", "identifier.value"),),
    "CareTeam": (("Status", "status"), ("Patient", "subject.reference"), ("Members", "participant.member.reference")),
    "AuditEvent": (
        ("When", "recorded"),
        # A person by their NIHDI or PSI number when they have one: their SSIN is shown only to themselves.
        (
            "Who",
            f"iif({_REQUESTOR}.altId.exists(), {_REQUESTOR}.altId, "
            f"iif({_REQUESTOR}.who.identifier.exists(), {_REQUESTOR}.who.identifier.value, {_REQUESTOR}.who.display))",
        ),
        ("Role", f"{_REQUESTOR}.role.coding.code"),
        ("Did", "subtype.code"),
        ("Outcome", "iif(outcomeDesc.exists(), outcomeDesc, outcome)"),
        ("On", "entity.what.reference.distinct()"),
    ),
    **{t: _CONFORMANCE for t in CONFORMANCE_TYPES},
}

_REFERENCE = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})")


@dataclass(frozen=True)
class Cell:
    """One value of a cell; `href` links a literal reference to its page."""

    text: str
    href: str | None = None


@cache
def _evaluators(res_type: str) -> tuple[Evaluator, ...]:
    """The type's columns, compiled once; as `Type.expression`, the form whose plain paths
    `compile_expression` evaluates without the FHIRPath engine."""
    return tuple(compile_expression(f"{res_type}.{expression}") for _, expression in COLUMNS.get(res_type, ()))


def headings(res_type: str) -> list[str]:
    return [name for name, _ in COLUMNS.get(res_type, ())]


def row(resource: dict[str, Any]) -> list[list[Cell]]:
    """The resource's cells, in the order of `headings`."""
    evaluators = _evaluators(resource.get("resourceType", ""))
    return [[_cell(value) for value in evaluate(resource)] for evaluate in evaluators]


def _cell(value: Any) -> Cell:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    match = _REFERENCE.fullmatch(text)
    return Cell(text, f"/resource/{match.group(1)}/{match.group(2)}" if match else None)

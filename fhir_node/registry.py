"""The resource types this node serves and what may be done with each: the single source for routing
checks and for the CapabilityStatement. Serving another type is one entry here."""

from __future__ import annotations

from dataclasses import dataclass

from fhir_node.outcome import FHIRError, error

#: FHIR's TypeRestfulInteraction codes we implement, in the CapabilityStatement's order.
ALL_INTERACTIONS = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)
#: SystemRestfulInteraction codes we implement ([base] level).
SYSTEM_INTERACTIONS = ("transaction", "batch", "search-system", "history-system")
APPEND_ONLY = ("read", "vread", "history-instance", "history-type", "create", "search-type")
#: Our published guide: the node itself writes it from profiles/ and terminology/ (fhir_node.conformance.published).
READ_ONLY = ("read", "vread", "search-type")
#: The guide's resource types, served read-only: exactly the published resources of these types.
CONFORMANCE_TYPES = (
    "StructureDefinition",
    "ValueSet",
    "CodeSystem",
    "SearchParameter",
    "NamingSystem",
    "ImplementationGuide",
    "OperationDefinition",
)


@dataclass(frozen=True)
class ResourceKind:
    """A served resource type; `interactions` are the TypeRestfulInteraction codes it allows."""

    name: str
    interactions: tuple[str, ...] = ALL_INTERACTIONS
    documentation: str = ""

    def allows(self, interaction: str) -> bool:
        return interaction in self.interactions


KINDS: dict[str, ResourceKind] = {
    k.name: k
    for k in (
        ResourceKind("EpisodeOfCare", documentation="A patient's inclusion in an integrated-care project (PSI)."),
        ResourceKind("Consent", documentation="A patient's accept or refuse of research and statistics use."),
        ResourceKind(
            "AuditEvent",
            APPEND_ONLY,
            "The security log: evidence, so it is append-only (update and delete answer 405).",
        ),
        ResourceKind("Patient", documentation="Pseudonymised SSIN only: no name, no birth date are stored."),
        ResourceKind("Organization", documentation="Integrated-care projects, pharmacies (NIHDI, CBE numbers)."),
        ResourceKind("Practitioner", documentation="Declaring care providers (NIHDI number)."),
        ResourceKind(
            "CareTeam",
            documentation="Therapeutic relationships the operator loads: a patient (subject) and the providers "
            "(Practitioner) and pharmacies (Organization), by NIHDI number, with their periods.",
        ),
        ResourceKind(
            "Group",
            documentation="Cohorts the operator defines for Group-level Bulk Data export: actual groups of Patients "
            "(member.entity).",
        ),
        *(
            ResourceKind(name, READ_ONLY, f"Our published {name}s (profiles/, terminology/): read-only.")
            for name in CONFORMANCE_TYPES
        ),
    )
}

#: The interaction each HTTP method performs at each URL level ([type]/[id] and [type]).
_LEVELS = {
    "instance": {"GET": "read", "HEAD": "read", "PUT": "update", "PATCH": "patch", "DELETE": "delete"},
    "type": {"GET": "search-type", "HEAD": "search-type", "POST": "create", "PUT": "update", "DELETE": "delete"},
}


def kind(name: str) -> ResourceKind:
    """The served type called `name`, or a 404 naming it."""
    found = KINDS.get(name)
    if found is None:
        raise FHIRError(404, [error("not-supported", f"Resource type '{name}' is not served by this node")])
    return found


def allowed_methods(res_kind: ResourceKind, level: str) -> list[str]:
    """The HTTP methods a URL of this level accepts for this type: the Allow header of its 405."""
    return sorted(m for m, interaction in _LEVELS[level].items() if res_kind.allows(interaction))


def require(res_kind: ResourceKind, interaction: str, level: str = "instance") -> None:
    """405, with the methods this URL does allow, when `interaction` is not allowed on this type."""
    if res_kind.allows(interaction):
        return
    raise FHIRError(
        405,
        [error("not-supported", f"{interaction} is not allowed on {res_kind.name}")],
        {"Allow": ", ".join(allowed_methods(res_kind, level))},
    )


def require_method(res_kind: ResourceKind, method: str, level: str) -> None:
    """405 for an HTTP method that performs no allowed interaction at this level (POST on an instance)."""
    interaction = _LEVELS[level].get(method)
    if interaction is None:
        raise FHIRError(
            405,
            [error("not-supported", f"{method} is not allowed on a {res_kind.name} {level} URL")],
            {"Allow": ", ".join(allowed_methods(res_kind, level))},
        )
    require(res_kind, interaction, level)

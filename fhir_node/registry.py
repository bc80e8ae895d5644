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
APPEND_ONLY = ("read", "vread", "history-instance", "history-type", "create", "search-type")


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
    )
}

#: Interactions reachable at each URL level, with their HTTP method, for the Allow header of a 405.
_LEVELS = {
    "instance": {"read": "GET", "update": "PUT", "patch": "PATCH", "delete": "DELETE"},
    "type": {"search-type": "GET", "create": "POST", "update": "PUT", "delete": "DELETE"},
}


def kind(name: str) -> ResourceKind:
    """The served type called `name`, or a 404 naming it."""
    found = KINDS.get(name)
    if found is None:
        raise FHIRError(404, [error("not-supported", f"Resource type '{name}' is not served by this node")])
    return found


def require(res_kind: ResourceKind, interaction: str, level: str = "instance") -> None:
    """405, with the methods this URL does allow, when `interaction` is not allowed on this type."""
    if res_kind.allows(interaction):
        return
    allow = sorted({m for i, m in _LEVELS[level].items() if res_kind.allows(i)})
    raise FHIRError(
        405,
        [error("not-supported", f"{interaction} is not allowed on {res_kind.name}")],
        {"Allow": ", ".join(allow)},
    )

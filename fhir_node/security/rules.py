"""The deliberation's access rules (18/053, §9-13) as data: per role, per resource type, per SMART
permission letter (c create, r read, u update, d delete, s search), whose data it reaches.

Reaches:
- `all`: every resource of the type.
- `own`: the patient's own data (their Patient, resources whose `patient` is them, AuditEvents about them).
- `relationship`: patients with whom the provider (or the pharmacist's pharmacy) has a current
  therapeutic relationship (`fhir_node.security.relationships`).
- `project`: patients included in the caller's own integrated-care project (PSI); for EpisodeOfCare,
  the project's own inclusions in full, and its patients' principal inclusions elsewhere redacted.
- `declare`: creating an inclusion needs no relationship (a provider may declare one for anyone).
- `consented`: patients whose latest research consent is an active permit (`fhir_node.rules.research_consent`),
  and everything about them; nothing of anyone else.

`fhir_node.security.policy` turns these into SQL conditions and checks; nothing else decides access."""

from __future__ import annotations

from typing import Literal

from fhir_node.registry import CONFORMANCE_TYPES, KINDS

Reach = Literal["all", "own", "relationship", "project", "declare", "consented"]
Grants = dict[str, dict[str, Reach]]

_PUBLIC: Grants = {t: {"r": "all", "s": "all"} for t in CONFORMANCE_TYPES}
#: The directory (projects, pharmacies, providers) is not patient data.
_DIRECTORY: Grants = {"Organization": {"r": "all", "s": "all"}, "Practitioner": {"r": "all", "s": "all"}}

_CARE_PROVIDER: Grants = {
    "EpisodeOfCare": {"c": "declare", "r": "relationship", "s": "relationship", "u": "relationship"},
    "Consent": {"c": "relationship", "r": "relationship", "s": "relationship", "u": "relationship"},
    "Patient": {"c": "declare", "r": "relationship", "s": "relationship"},
    **_DIRECTORY,
    **_PUBLIC,
}

GRANTS: dict[str, Grants] = {
    "patient": {
        "EpisodeOfCare": {"r": "own", "s": "own"},
        "Consent": {"c": "own", "r": "own", "s": "own", "u": "own"},
        "Patient": {"r": "own", "s": "own"},
        "AuditEvent": {"r": "own", "s": "own"},
        **_PUBLIC,
    },
    "provider": _CARE_PROVIDER,
    "pharmacist": _CARE_PROVIDER,
    "psi-admin": {
        "EpisodeOfCare": {"c": "project", "r": "project", "s": "project", "u": "project"},
        "Consent": {"c": "project", "r": "project", "s": "project", "u": "project"},
        "Patient": {"c": "declare", "r": "project", "s": "project"},
        **_DIRECTORY,
        **_PUBLIC,
    },
    "psi-coordinator": {
        "EpisodeOfCare": {"r": "project", "s": "project"},
        "Patient": {"r": "project", "s": "project"},
        **_DIRECTORY,
        **_PUBLIC,
    },
    "aggregator": {
        **{t: {"r": "consented", "s": "consented"} for t in ("EpisodeOfCare", "Consent", "Patient")},
        **_DIRECTORY,
        **_PUBLIC,
    },
    #: The insurers (organismes assureurs) bill the principal inclusions (annex items 7-9: "Export"): they read
    #: every inclusion and its patient (by SSIN), whatever the research consent, and write nothing.
    "insurer": {
        **{t: {"r": "all", "s": "all"} for t in ("EpisodeOfCare", "Patient")},
        **_DIRECTORY,
        **_PUBLIC,
    },
    "operator": {
        t: {letter: "all" for letter in "cruds" if t != "AuditEvent" or letter in "crs"} for t in KINDS
    },
}

#: Who may call the node's own operations. `Patient/[id]/$deceased` and `$ssin-change` carry the National
#: Register's mutation feed (deliberation 18/053, §9), which the node's operator runs: nobody else changes
#: a patient's identity or closes all of a patient's inclusions in one call. Each write an operation makes
#: is then checked like any other (the token's scopes too). A Bulk Data `$export` (each of what it may
#: search) is for the central index (consented patients only) and the operator; PSI staff may not (no mass
#: export, §12), nor anyone else.
OPERATIONS: dict[str, frozenset[str]] = {
    "deceased": frozenset({"operator"}),
    "ssin-change": frozenset({"operator"}),
    "export": frozenset({"aggregator", "operator"}),
}

#: What an update may change, per role and type: top-level elements or `element.child` paths (None:
#: anything). Providers change status, period and the principal/information type; PSI administrative
#: staff the start date; everyone who may update a Consent changes it as a whole.
MUTABLE: dict[str, dict[str, tuple[str, ...] | None]] = {
    "provider": {"EpisodeOfCare": ("status", "statusHistory", "period", "type"), "Consent": None},
    "pharmacist": {"EpisodeOfCare": ("status", "statusHistory", "period", "type"), "Consent": None},
    "psi-admin": {"EpisodeOfCare": ("period.start",), "Consent": None},
    "patient": {"Consent": None},
}

#: EpisodeOfCare elements a PSI sees of another project's principal inclusion of one of its patients;
#: everything else (managingOrganization, the recorder, identifiers, care team...) is removed.
REDACTED_KEEPS = ("resourceType", "id", "meta", "status", "type", "patient", "period")
#: Search parameters over those kept elements: any other criterion or sort leaves redacted ones out.
REDACTED_PARAMS = frozenset({"patient", "status", "type", "date", "_id", "_lastUpdated"})

#: Roles whose counts (`_summary=count`, Bundle.total) are small-cell suppressed (`fhir_node.rules.small_cells`).
SUPPRESSED_COUNTS = frozenset({"aggregator"})

#: The search parameter that ties a resource of each type to its patient.
PATIENT_PARAM = {"EpisodeOfCare": "patient", "Consent": "patient", "CareTeam": "patient", "AuditEvent": "patient"}

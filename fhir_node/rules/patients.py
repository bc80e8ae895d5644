"""How the inclusion rules find a patient and every inclusion of it: with the node's ordinary search code,
by literal reference and by SSIN, so the rules see what a search sees (whatever form the SSIN is stored
in)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
from sqlalchemy import Connection

from fhir_node.interactions.search import matching
from fhir_node.registry import CONFORMANCE_TYPES, KINDS
from fhir_node.rules.inclusion import INCLUSION_STATUS, Inclusion
from fhir_node.rules.pseudonym import in_clear
from fhir_node.search.registry import registry
from fhir_node.security.relationships import SSIN
from fhir_node.store import repository
from fhir_node.store.batch import notes
from fhir_node.store.database import lock

#: Types whose references to a patient nothing re-links: evidence, the patients themselves, the guide.
_UNTOUCHED = ("AuditEvent", "Patient", *CONFORMANCE_TYPES)
#: How many inclusions of one patient a rule looks at: far more than any patient has.
MANY = 10_000
_WRITTEN = "fhir_node.rules.written"
_FORESEEN = "fhir_node.rules.foreseen"


@dataclass(frozen=True)
class Patient:
    """One patient as inclusions refer to it: Patient ids (literal references, or the Patients holding
    the SSIN) and SSINs (identifier references, or the literal Patient's own)."""

    ids: frozenset[str]
    ssins: frozenset[str]

    def lock(self, conn: Connection) -> None:
        """Hold this patient's locks until commit: every writer about it shares at least one, however it
        refers to it (taken in name order)."""
        lock_patients(conn, [self])

    def meets(self, other: Patient) -> bool:
        return bool(self.ids & other.ids or self.ssins & other.ssins)


def lock_patients(conn: Connection, patients: Iterable[Patient]) -> None:
    """Hold the locks of these patients until commit, all in name order (one round trip)."""
    names = {f"patient:{i}" for p in patients for i in p.ids} | {f"ssin:{s}" for p in patients for s in p.ssins}
    lock(conn, *sorted(names))


def ssin_of(reference: dict[str, Any]) -> str | None:
    """The SSIN a reference names by identifier, if any."""
    ident = reference.get("identifier") or {}
    value = ident.get("value")
    return value if ident.get("system") == SSIN and isinstance(value, str) else None


def patient_ssins(content: bytes | None) -> list[str]:
    """The SSINs a stored Patient carries."""
    if content is None:
        return []
    return [i["value"] for i in in_clear(content).get("identifier", []) if i.get("system") == SSIN and "value" in i]


def patient_of(conn: Connection, reference: dict[str, Any]) -> Patient:
    """Who a `patient` reference denotes: its literal Patient (and that Patient's SSINs), its SSIN (and
    the Patients holding it)."""
    ids: set[str] = set()
    ssins: set[str] = set()
    ref = reference.get("reference")
    if isinstance(ref, str) and ref.startswith("Patient/"):
        ids.add(ref.removeprefix("Patient/"))
        found = repository.current(conn, "Patient", ref.removeprefix("Patient/"))
        if found is not None:
            ssins.update(patient_ssins(found.content))
    ssin = ssin_of(reference)
    if ssin is not None:
        ssins.add(ssin)
    for value in sorted(ssins):
        ids.update(matching(conn, "Patient", f"identifier={ssin_token(value)}", None, MANY))
    return Patient(frozenset(ids), frozenset(ssins))


def foresee(conn: Connection, references: list[dict[str, Any]]) -> list[Patient]:
    """`patient_of` each reference, remembered for `patient_in` during this transaction's batched writes
    (a Bundle's): the caller makes sure none of them changes a stored Patient, so the Patient rows and
    SSIN index rows `patient_of` reads stay as they are until the batch ends (new ones are deferred)."""
    patients = [patient_of(conn, r) for r in references]
    noted = notes(conn)
    if noted is not None:
        noted[_FORESEEN] = {_key(r): p for r, p in zip(references, patients, strict=True)}
    return patients


def patient_in(conn: Connection, reference: dict[str, Any]) -> Patient:
    """`patient_of`, answered from `foresee` while the batched writes that asked it go on."""
    foreseen = (notes(conn) or {}).get(_FORESEEN)
    found = foreseen.get(_key(reference)) if foreseen is not None else None
    return found if found is not None else patient_of(conn, reference)


def _key(reference: dict[str, Any]) -> bytes:
    return orjson.dumps(reference, option=orjson.OPT_SORT_KEYS)


def inclusions_of(conn: Connection, patient: Patient, criteria: str = "") -> set[str]:
    """Ids of the live EpisodeOfCare of this patient (from `patient_of`), by literal reference or by SSIN,
    narrowed by extra search `criteria`. A reference to another Patient holding the SSIN needs no chained
    `patient.identifier` search: `patient_of` put every Patient holding it among the ids."""
    extra = f"&{criteria}" if criteria else ""
    queries = [f"patient=Patient/{i}" for i in sorted(patient.ids)]
    queries += [f"patient:identifier={ssin_token(value)}" for value in sorted(patient.ssins)]
    return {found for q in queries for found in matching(conn, "EpisodeOfCare", q + extra, None, MANY)}


def referring(conn: Connection, ssin: str) -> dict[str, set[str]]:
    """Ids, by type, of the resources whose references name a patient by this SSIN; not the AuditEvents
    (evidence, never rewritten), nor Patients and the published guide."""
    found: dict[str, set[str]] = {}
    for res_type in KINDS:
        if res_type in _UNTOUCHED:
            continue
        for param in registry().of(res_type).values():
            if param.type == "reference" and (not param.targets or "Patient" in param.targets):
                ids = matching(conn, res_type, f"{param.code}:identifier={ssin_token(ssin)}", None, MANY)
                found.setdefault(res_type, set()).update(ids)
    return {t: ids for t, ids in found.items() if ids}


def principal_criteria() -> str:
    return "type=" + quote(f"{INCLUSION_STATUS}|principal", safe=":/")


def loaded(conn: Connection, ids: Iterable[str]) -> dict[str, Inclusion]:
    """The current content of these EpisodeOfCare, parsed (a deleted one is left out)."""
    out = {}
    for res_id in sorted(ids):
        found = repository.current(conn, "EpisodeOfCare", res_id)
        if found is not None and found.content is not None:
            out[res_id] = Inclusion.of(res_id, in_clear(found.content))
    return out


def remember(conn: Connection, inclusion: Inclusion, patient: Patient) -> dict[str, tuple[Inclusion, Patient]]:
    """Note an inclusion about to be written; the inclusions this transaction wrote so far, by id. A Bundle's
    index rows are inserted at its end, so searches do not find them before: the rules look here too."""
    transaction = conn.get_transaction()
    held = conn.info.get(_WRITTEN)
    if held is None or held[0] is not transaction:  # another transaction began: forget the last one's
        held = conn.info[_WRITTEN] = (transaction, {})
    held[1][inclusion.res_id] = (inclusion, patient)
    return held[1]


def ssin_token(ssin: str) -> str:
    """`system|value` of an SSIN, for search criteria."""
    return quote(f"{SSIN}|{ssin}", safe=":/")

"""`fhir-node synth`: a realistic, deterministic BIHR scenario for testers, examples and benchmarks.

Integrated-care projects (PSI: Organization with NIHDI and CBE numbers), their care providers
(Practitioner, NIHDI) and pharmacies (Organization), patients (SSIN only), inclusions (EpisodeOfCare,
`principal` or `information`) over several years with exclusions, research consents accepted or
refused, and the BALP audit trail of those operations. Every number carries real check digits, and a
patient has at most one `principal` inclusion at a time.

The same seed gives the same bytes. Patients are generated one at a time and written out as they
come (only the small directory of projects, providers and pharmacies stays in memory), so 100,000+
patients take seconds, not gigabytes. Three output shapes:

- `bundles`: transaction Bundles of at most `chunk` entries, one series of files per project (a
  patient goes with their first project). Every entry is a conditional create (`ifNoneExist` on its
  business identifier, see `fhir_node.load.identity`) and each Bundle carries the directory entries
  it refers to, so the files load in any order, and loading them twice creates nothing new.
- `resources`: one JSON file per resource, with ids and `Type/id` references.
- `ndjson`: one file per resource type, one resource per line, same ids as `resources`.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import math
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from fhir_node.load import identity
from fhir_node.rules import billing
from fhir_node.rules.check_digits import cbe, nihdi_organisation, nihdi_professional, ssin

BASE = "https://fhir-node.be/fhir"
SSIN_SYSTEM = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/ssin"
NIHDI_SYSTEM = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/nihdi"
CBE_SYSTEM = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/cbe"
INCLUSION_STATUS_SYSTEM = f"{BASE}/CodeSystem/inclusion-status"
URI_SYSTEM = "urn:ietf:rfc:3986"  # identifiers that are URIs (urn:uuid:...): inclusion and consent ids
PROFILE = {
    "Organization": f"{BASE}/StructureDefinition/bihr-organization",
    "Practitioner": f"{BASE}/StructureDefinition/bihr-practitioner",
    "Patient": f"{BASE}/StructureDefinition/bihr-patient",
    "EpisodeOfCare": f"{BASE}/StructureDefinition/bihr-inclusion",
    "Consent": f"{BASE}/StructureDefinition/bihr-research-consent",
}
AUDIT_PROFILE = f"{BASE}/StructureDefinition/bihr-audit-"  # + create | patient-create | query ...

_UUID_MASK = ~(0xF000 << 64 | 0xC000 << 48) & (1 << 128) - 1  # clears the version and variant bits
_UUID_V4 = 0x4000 << 64 | 0x8000 << 48  # version 4, RFC 4122 variant

#: The scenario's "today": fixed, so the output does not depend on the day it is generated.
REFERENCE_DAY = datetime.date(2025, 6, 30)
#: The integrated-care pilot projects started in 2018.
FIRST_DAY = datetime.date(2018, 1, 1)
#: Order in which resource types must be written so references point backwards (resources, ndjson).
TYPE_ORDER = ("Organization", "Practitioner", "Patient", "EpisodeOfCare", "Consent", "AuditEvent")

_PROJECTS = (
    ("Zorgzaam Kempen", "Geel"),
    ("Réseau Santé Meuse", "Namur"),
    ("Brussels Care Together", "Bruxelles"),
    ("Gezond Waasland", "Sint-Niklaas"),
    ("Soins Intégrés Hainaut Ouest", "Tournai"),
    ("Leie en Schelde Samen", "Kortrijk"),
    ("Chronicité Liège", "Liège"),
    ("Zorgnet Limburg Zuid", "Hasselt"),
    ("Ardenne Santé", "Arlon"),
    ("Oostkust Zorgt", "Oostende"),
    ("Brabant Wallon Coordonné", "Wavre"),
    ("Mechelen Zorgt Samen", "Mechelen"),
)
_FAMILY = ("Peeters", "Janssens", "Maes", "Jacobs", "Mertens", "Willems", "Claes", "Goossens", "Wouters",
           "Dubois", "Lambert", "Dupont", "Martin", "Simon", "Laurent", "Leroy", "Lemaire", "Renard")  # fmt: skip
_GIVEN = ("An", "Els", "Sarah", "Julie", "Marie", "Lotte", "Nathalie", "Sofie", "Tom", "Koen", "Pieter",
          "Luc", "Marc", "Thomas", "Nicolas", "Olivier", "Hélène", "Mehdi", "Fatima", "Yusuf")  # fmt: skip
#: Care providers who declare inclusions: (profession digit, qualification, weight).
_PROFESSIONS = ((1, 3, 5), (4, 401, 4), (5, 601, 1))  # general practitioner, home nurse, physiotherapist
_PSI_CATEGORY, _PHARMACY_CATEGORY = 9, 6  # first digit of the organisations' 8-digit NIHDI numbers (assumed)
RECORDER_URL = "https://www.ehealth.fgov.be/standards/fhir/core/StructureDefinition/be-ext-recorder"


@dataclass(frozen=True)
class Options:
    """What to generate and where: `patients` and `seed` decide the content, the rest its shape."""

    patients: int
    seed: int
    out: Path
    shape: Literal["bundles", "resources", "ndjson"] = "bundles"
    chunk: int = 500
    pretty: bool = False  # indented Bundles, for people to read (single resources always are)


@dataclass
class Item:
    """One generated resource: its type, its id (a UUID), and what it refers to in the directory."""

    res_type: str
    res_id: str
    resource: dict[str, Any]
    needs: tuple[str, ...] = ()  # ids of directory items referred to (organisations, practitioners)


@dataclass
class Project:
    """A PSI with its own care providers and operators (administrative staff); its pharmacies are kept apart."""

    slug: str
    org: Item
    practitioners: list[Item] = field(default_factory=list)
    operators: list[str] = field(default_factory=list)  # NISS of the PSI's administrative staff


@dataclass(frozen=True)
class Stats:
    """What a run wrote: resources per type, files, and patients."""

    patients: int
    resources: dict[str, int]
    files: int


def synth(options: Options, progress: Callable[[int], None] | None = None) -> Stats:
    """Write the scenario under `options.out`; `progress(n)` is told of every patient done."""
    gen = _Generator(options)
    writer = _writer(options, gen.ref)
    for project in gen.projects:
        for item in gen.directory(project):
            writer.directory(item)
        for item in gen.coordinator_queries(project):
            writer.add(project.slug, [item])
    for i in range(options.patients):
        project, items = gen.patient()
        writer.add(project.slug, items)
        if progress:
            progress(i + 1)
    files = writer.close()
    return Stats(options.patients, dict(writer.counts), files)


class _Generator:
    """All randomness of a run comes from one `random.Random(seed)`, drawn in a fixed order."""

    def __init__(self, options: Options) -> None:
        self.rng = random.Random(options.seed)
        self.shape = options.shape
        self.used_ssins: set[str] = set()
        self.used_nihdi: set[int] = set()
        self.operator_niss: dict[str, str] = {}
        n_projects = max(2, min(len(_PROJECTS), math.ceil(options.patients / 10)))
        per_project = options.patients / n_projects
        self.n_practitioners = max(3, min(400, round(per_project / 40)))
        self.n_pharmacies = max(1, min(60, round(per_project / 300)))
        self.projects = [self._project(i) for i in range(n_projects)]
        self.pharmacies = [[self._pharmacy(p) for _ in range(self.n_pharmacies)] for p in self.projects]

    # --- references and ids -------------------------------------------------------------------

    def new_id(self) -> str:
        """A version-4 UUID from the run's generator, formatted by hand (2.3 times faster than uuid.UUID)."""
        h = f"{self.rng.getrandbits(128) & _UUID_MASK | _UUID_V4:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def ref(self, res_type: str, res_id: str) -> str:
        """Bundles refer by fullUrl (urn:uuid), single resources by `Type/id`."""
        return f"urn:uuid:{res_id}" if self.shape == "bundles" else f"{res_type}/{res_id}"

    def by_ssin(self, patient: Item) -> dict[str, Any]:
        """The profiles refer to a patient by SSIN; the literal reference makes search and _include work."""
        return {"reference": self.ref("Patient", patient.res_id), "identifier": patient.resource["identifier"][0]}

    def by_nihdi(self, item: Item) -> dict[str, Any]:
        """A care provider or a PSI: by NIHDI number (what the deliberation stores), and the literal reference."""
        return {"reference": self.ref(item.res_type, item.res_id), "identifier": item.resource["identifier"][0]}

    def day(self, low: datetime.date, high: datetime.date) -> datetime.date:
        return datetime.date.fromordinal(self.rng.randint(low.toordinal(), high.toordinal()))

    def instant(self, day: datetime.date) -> str:
        """A moment during office hours of `day`, as a FHIR instant (UTC)."""
        seconds = self.rng.randint(7 * 3600, 18 * 3600)
        return f"{day.isoformat()}T{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}Z"

    def niss(self, born_from: int = 1950, born_to: int = 2004) -> str:
        """A fresh SSIN: mostly national register numbers, 3% BIS numbers, unique in the run."""
        while True:
            birth = self.day(datetime.date(born_from, 1, 1), datetime.date(born_to, 12, 31))
            bis = self.rng.choice((20, 40)) if self.rng.random() < 0.03 else 0
            value = ssin(birth, self.rng.randint(1, 998), bis)
            if value not in self.used_ssins:
                self.used_ssins.add(value)
                return value

    def nihdi_sequence(self, first_digit: int) -> int:
        while True:
            sequence = self.rng.randint(0, 99_999)
            if first_digit * 100_000 + sequence not in self.used_nihdi:
                self.used_nihdi.add(first_digit * 100_000 + sequence)
                return sequence

    # --- the directory: projects, care providers, pharmacies ---------------------------------

    def _project(self, index: int) -> Project:
        name, town = _PROJECTS[index]
        org = self._organization(name, _PSI_CATEGORY, town)
        project = Project(_slug(name), org)
        for _ in range(self.n_practitioners):
            profession, qualification, _weight = self.rng.choices(_PROFESSIONS, [w for *_, w in _PROFESSIONS])[0]
            project.practitioners.append(self._practitioner(profession, qualification))
        project.operators = [self.niss() for _ in range(3)]
        return project

    def _organization(self, name: str, category: int, town: str) -> Item:
        res_id = self.new_id()
        number = nihdi_organisation(category, self.nihdi_sequence(category))
        resource = {
            "resourceType": "Organization",
            **self._head(PROFILE["Organization"], res_id),
            "identifier": [
                {"system": NIHDI_SYSTEM, "value": number},
                {"system": CBE_SYSTEM, "value": cbe(self.rng.randint(200_000_000, 999_999_999) // 100)},
            ],
            "active": True,
            "name": name,
            "address": [{"city": town, "country": "BE"}],
        }
        return Item("Organization", res_id, resource)

    def _pharmacy(self, project: Project) -> Item:
        town = project.org.resource["address"][0]["city"]
        label = self.rng.choice(
            ("Pharmacie du Centre", "Apotheek De Linde", "Pharmacie de la Gare", "Apotheek Sint-Jan")
        )
        return self._organization(f"{label} {town}", _PHARMACY_CATEGORY, town)

    def _practitioner(self, profession: int, qualification: int) -> Item:
        res_id = self.new_id()
        number = nihdi_professional(profession, self.nihdi_sequence(profession), qualification)
        resource = {
            "resourceType": "Practitioner",
            **self._head(PROFILE["Practitioner"], res_id),
            "identifier": [{"system": NIHDI_SYSTEM, "value": number}],
            "active": True,
            "name": [{"family": self.rng.choice(_FAMILY), "given": [self.rng.choice(_GIVEN)]}],
        }
        self.operator_niss[res_id] = self.niss()  # the provider's NISS: the audit events' operator, never stored
        return Item("Practitioner", res_id, resource)

    def directory(self, project: Project) -> Iterator[Item]:
        """The project's organisation, care providers and pharmacies, written before any patient."""
        yield project.org
        yield from project.practitioners
        yield from self.pharmacies[self.projects.index(project)]

    def _head(self, profile: str, res_id: str) -> dict[str, Any]:
        """id (single resources only: Bundle entries get server ids) and meta.profile."""
        head: dict[str, Any] = {"meta": {"profile": [profile]}}
        return {"id": res_id, **head} if self.shape != "bundles" else head

    # --- patients and their story ---------------------------------------------------------------

    def patient(self) -> tuple[Project, list[Item]]:
        """One patient with inclusions, consents and their audit trail; the project they belong to first."""
        rng = self.rng
        res_id = self.new_id()
        born_from, born_to = rng.choice(((1925, 1955), (1925, 1955), (1956, 1985), (1986, 1999), (2000, 2015)))
        patient = Item(
            "Patient",
            res_id,
            {
                "resourceType": "Patient",
                **self._head(PROFILE["Patient"], res_id),
                "identifier": [{"system": SSIN_SYSTEM, "value": self.niss(born_from, born_to)}],
            },
        )
        items = [patient]
        episodes = self._principal_inclusions(patient)
        if rng.random() < 0.25:
            episodes.append(self._information_inclusion(patient, episodes[0][0]))
        first_project = episodes[0][0]
        for project, episode, declared_by in episodes:
            items.append(episode)
            items.append(self._audit("create", episode, patient, project, declared_by, _episode_start(episode)))
            if "end" in episode.resource["period"]:
                end = datetime.date.fromisoformat(episode.resource["period"]["end"])
                items.append(self._audit("update", episode, patient, project, declared_by, end))
            if rng.random() < 0.4:
                reader = rng.choice(project.practitioners)
                day = self.day(_episode_start(episode), REFERENCE_DAY)
                items.append(self._audit("read", episode, patient, project, reader, day))
        items.extend(self._consents(patient, first_project, episodes[0][2], _episode_start(episodes[0][1])))
        return first_project, items

    def _principal_inclusions(self, patient: Item) -> list[tuple[Project, Item, Item]]:
        """One to three `principal` inclusions in turn: each starts after the previous one ended."""
        rng = self.rng
        start = self.day(FIRST_DAY, REFERENCE_DAY - datetime.timedelta(days=30))
        project = rng.choice(self.projects)
        out = []
        while True:
            end = start + datetime.timedelta(days=rng.randint(60, 1500)) if rng.random() < 0.35 else None
            if end is not None and end > REFERENCE_DAY:
                end = None
            out.append(self._inclusion(patient, project, "principal", start, end))
            if end is None or len(out) == 3 or rng.random() < 0.6:
                return out
            start = end + datetime.timedelta(days=rng.randint(1, 120))
            if start > REFERENCE_DAY:
                return out
            project = rng.choice(self.projects)

    def _information_inclusion(self, patient: Item, principal: Project) -> tuple[Project, Item, Item]:
        """An `information` inclusion in another project: it may overlap the principal one."""
        others = [p for p in self.projects if p is not principal]
        start = self.day(FIRST_DAY, REFERENCE_DAY - datetime.timedelta(days=30))
        end = self.day(start + datetime.timedelta(days=30), REFERENCE_DAY) if self.rng.random() < 0.3 else None
        return self._inclusion(patient, self.rng.choice(others), "information", start, end)

    def _inclusion(
        self, patient: Item, project: Project, status: str, start: datetime.date, end: datetime.date | None
    ) -> tuple[Project, Item, Item]:
        res_id = self.new_id()
        declared_by = self.rng.choice(project.practitioners)
        recorder = self._pharmacy_declaring(project, res_id) or declared_by
        period = {"start": start.isoformat(), **({"end": end.isoformat()} if end else {})}
        resource = {
            "resourceType": "EpisodeOfCare",
            **self._head(PROFILE["EpisodeOfCare"], res_id),
            "identifier": [{"system": URI_SYSTEM, "value": f"urn:uuid:{self.new_id()}"}],
            "extension": [{"url": RECORDER_URL, "valueReference": self.by_nihdi(recorder)}],
            "status": "finished" if end else "active",
            "type": [{"coding": [{"system": INCLUSION_STATUS_SYSTEM, "code": status}]}],
            "patient": self.by_ssin(patient),
            "managingOrganization": self.by_nihdi(project.org),
            "period": period,
        }
        item = Item("EpisodeOfCare", res_id, billing.stamped(resource), (project.org.res_id, recorder.res_id))
        return project, item, declared_by

    def _pharmacy_declaring(self, project: Project, res_id: str) -> Item | None:
        """One inclusion in eight is declared by a pharmacist, recorded as their pharmacy (by NIHDI number);
        chosen from the inclusion's id, so the random stream (and every other example) stays the same."""
        pharmacies = self.pharmacies[self.projects.index(project)]
        return pharmacies[int(res_id[2:4], 16) % len(pharmacies)] if int(res_id[:2], 16) % 8 == 0 else None

    def _consents(self, patient: Item, project: Project, declared_by: Item, day: datetime.date) -> list[Item]:
        """The research consent asked at inclusion (3 in 4 accept); 1 in 10 change their mind later."""
        rng = self.rng
        accepted = rng.random() < 0.75
        first = self._consent(patient, project, "permit" if accepted else "deny", day)
        items = [first, self._audit("create", first, patient, project, declared_by, day)]
        if rng.random() < 0.1 and day < REFERENCE_DAY - datetime.timedelta(days=60):
            later = self.day(day + datetime.timedelta(days=30), REFERENCE_DAY)
            first.resource["status"] = "inactive"
            second = self._consent(patient, project, "deny" if accepted else "permit", later)
            items += [second, self._audit("create", second, patient, project, declared_by, later)]
        return items

    def _consent(self, patient: Item, project: Project, decision: str, day: datetime.date) -> Item:
        """Research, and for 4 in 10 also statistics: both are uses the deliberation names."""
        res_id = self.new_id()
        purposes = [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"}]
        if self.rng.random() < 0.4:
            purposes.append({"system": f"{BASE}/CodeSystem/consent-purpose", "code": "statistics"})
        resource = {
            "resourceType": "Consent",
            **self._head(PROFILE["Consent"], res_id),
            "identifier": [{"system": URI_SYSTEM, "value": f"urn:uuid:{self.new_id()}"}],
            "status": "active",
            "scope": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
            },
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": self.by_ssin(patient),
            "dateTime": self.instant(day),
            "performer": [{"reference": self.ref("Patient", patient.res_id)}],
            "organization": [self.by_nihdi(project.org)],
            # The policy is the opt-in of deliberation 18/053; the patient's answer is provision.type.
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
            "provision": {"type": decision, "purpose": purposes},
        }
        return Item("Consent", res_id, resource, (project.org.res_id,))

    # --- the audit trail (IHE BALP) --------------------------------------------------------------

    def _audit(
        self, interaction: str, target: Item, patient: Item, project: Project, by: Item, day: datetime.date
    ) -> Item:
        """The BALP AuditEvent the node records for a RESTful interaction on a patient's data."""
        action, user_role = _BALP[interaction]
        entities = [
            _entity("1", "1", {"reference": self.ref("Patient", patient.res_id)}),
            _entity("2", "4", {"reference": self.ref(target.res_type, target.res_id)}),
        ]
        niss = self.operator_niss[by.res_id]
        return self._audit_event(
            f"patient-{interaction}", interaction, action, user_role, by, niss, project, day, entities
        )

    def coordinator_queries(self, project: Project) -> Iterator[Item]:
        """A coordinator lists the project's patients now and then (BALP Query, no patient)."""
        nihdi = project.org.resource["identifier"][0]["value"]
        for _ in range(self.rng.randint(2, 6)):
            day = self.day(FIRST_DAY, REFERENCE_DAY)
            query = f"EpisodeOfCare?organization.identifier={NIHDI_SYSTEM}|{nihdi}&status=active"
            query_entity = {
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24"},
                "query": base64.b64encode(query.encode()).decode(),
            }
            operator = self.rng.choice(project.operators)
            yield self._audit_event("query", "search-type", "E", "IRCP", None, operator, project, day, [query_entity])

    def _audit_event(
        self,
        profile: str,
        interaction: str,
        action: str,
        user_role: str,
        by: Item | None,
        niss: str,
        project: Project,
        day: datetime.date,
        entities: list[dict[str, Any]],
    ) -> Item:
        res_id = self.new_id()
        request_id = self.new_id()
        user_who: dict[str, Any] = {"identifier": {"system": SSIN_SYSTEM, "value": niss}}
        if by is not None:
            user_who = {"reference": self.ref("Practitioner", by.res_id), **user_who}
        resource = {
            "resourceType": "AuditEvent",
            **self._head(AUDIT_PROFILE + profile, res_id),
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                "code": "rest",
                "display": "Restful Operation",
            },
            "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": interaction}],
            "action": action,
            "recorded": self.instant(day),
            "outcome": "0",
            "agent": [
                {
                    "type": _CLIENT_ROLE[interaction],
                    "who": {"display": f"{project.org.resource['name']} integrated-care app"},
                    "requestor": False,
                    "network": {"address": f"10.{self.rng.randint(0, 255)}.{self.rng.randint(0, 255)}.7", "type": "2"},
                },
                {
                    "type": _SERVER_ROLE[interaction],
                    "who": {"display": "fhir-node"},
                    "requestor": False,
                    "network": {"address": BASE, "type": "5"},
                },
                {
                    "type": _concept("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", user_role),
                    "who": user_who,
                    "requestor": True,
                },
            ],
            "source": {
                "observer": {"display": "fhir-node"},
                "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}],
            },
            "entity": [
                *entities,
                {
                    "what": {"identifier": {"value": request_id}},
                    "type": {
                        "system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType",
                        "code": "XrequestId",
                    },
                },
            ],
        }
        return Item("AuditEvent", res_id, resource, (by.res_id,) if by else ())


#: BALP action code and the user agent's participation type, per RESTful interaction.
_BALP = {"create": ("C", "AUT"), "update": ("U", "AUT"), "read": ("R", "IRCP")}


def _concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": system, "code": code, **({"display": display} if display else {})}
    return {"coding": [coding]}


_SOURCE = _concept("http://dicom.nema.org/resources/ontology/DCM", "110153", "Source Role ID")
_DESTINATION = _concept("http://dicom.nema.org/resources/ontology/DCM", "110152", "Destination Role ID")
#: BALP: the data flows from the client (source) to the server, except for a read, where it flows back.
_CLIENT_ROLE = {"create": _SOURCE, "update": _SOURCE, "search-type": _SOURCE, "read": _DESTINATION}
_SERVER_ROLE = {"create": _DESTINATION, "update": _DESTINATION, "search-type": _DESTINATION, "read": _SOURCE}


def _entity(entity_type: str, role: str, what: dict[str, Any]) -> dict[str, Any]:
    return {
        "what": what,
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": entity_type},
        "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": role},
    }


def _episode_start(item: Item) -> datetime.date:
    return datetime.date.fromisoformat(item.resource["period"]["start"])


def _slug(name: str) -> str:
    ascii_name = name.lower().translate(str.maketrans("éèêàç", "eeeac"))
    return "psi-" + re.sub(r"[^a-z0-9]+", "-", ascii_name).strip("-")


# --- writers ---------------------------------------------------------------------------------------


class _Writer:
    """Counts what is written; subclasses decide the files."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.counts: dict[str, int] = dict.fromkeys(TYPE_ORDER, 0)

    def directory(self, item: Item) -> None:
        self.counts[item.res_type] += 1
        self.write(item)

    def add(self, slug: str, items: list[Item]) -> None:
        for item in items:
            self.counts[item.res_type] += 1
            self.write(item)

    def write(self, item: Item) -> None:
        raise NotImplementedError

    def close(self) -> int:
        raise NotImplementedError


class _ResourceFiles(_Writer):
    """One pretty-printed file per resource, named `<Type>-<id>.json`."""

    def __init__(self, out: Path) -> None:
        super().__init__(out)
        self.files = 0

    def write(self, item: Item) -> None:
        path = self.out / f"{item.res_type}-{item.res_id}.json"
        path.write_bytes(orjson.dumps(item.resource, option=orjson.OPT_INDENT_2) + b"\n")
        self.files += 1

    def close(self) -> int:
        return self.files


class _Ndjson(_Writer):
    """One `<Type>.ndjson` per resource type; the types are written in reference order by `TYPE_ORDER`."""

    def __init__(self, out: Path) -> None:
        super().__init__(out)
        self.handles: dict[str, IO[bytes]] = {
            t: (out / f"{i + 1}-{t}.ndjson").open("wb") for i, t in enumerate(TYPE_ORDER)
        }

    def write(self, item: Item) -> None:
        self.handles[item.res_type].write(orjson.dumps(item.resource) + b"\n")

    def close(self) -> int:
        for handle in self.handles.values():
            handle.close()
        return len(self.handles)


class _Bundles(_Writer):
    """Transaction Bundles of at most `chunk` entries per project, each with the directory it refers to.

    Entries wait encoded (bytes), not as dicts: thousands of queued resources as Python objects made the
    garbage collector's passes, and so the whole run, twice as slow."""

    def __init__(self, out: Path, chunk: int, ref: Callable[[str, str], str], pretty: bool) -> None:
        super().__init__(out)
        self.chunk = chunk
        self.ref = ref
        self.pretty = pretty
        self.known: dict[str, bytes] = {}  # directory entries by resource id
        self.pending: dict[str, list[bytes]] = {}
        self.needed: dict[str, dict[str, None]] = {}  # per project: directory ids the pending entries refer to
        self.numbers: dict[str, int] = {}
        self.files = 0

    def directory(self, item: Item) -> None:
        self.counts[item.res_type] += 1
        self.known[item.res_id] = self._entry(item)

    def add(self, slug: str, items: list[Item]) -> None:
        """Queue one patient's items; the project's Bundle is written first if they would not fit."""
        pending = self.pending.setdefault(slug, [])
        needed = self.needed.setdefault(slug, {})
        new = {n: None for item in items for n in item.needs if n not in needed}
        if pending and len(pending) + len(needed) + len(items) + len(new) > self.chunk:
            self._flush(slug)
            pending, needed = self.pending[slug], self.needed[slug]
            new = {n: None for item in items for n in item.needs}
        pending.extend(self._entry(item) for item in items)
        needed.update(new)
        for item in items:
            self.counts[item.res_type] += 1

    def _flush(self, slug: str) -> None:
        entries, needed = self.pending.get(slug), self.needed.get(slug, {})
        self.pending[slug], self.needed[slug] = [], {}
        if not entries:
            return
        self.numbers[slug] = self.numbers.get(slug, 0) + 1
        self._write(f"{slug}-{self.numbers[slug]:04d}", [self.known[i] for i in needed] + entries)

    def _write(self, name: str, entries: list[bytes]) -> None:
        bundle = b'{"resourceType":"Bundle","type":"transaction","entry":[' + b",".join(entries) + b"]}"
        if self.pretty:
            bundle = orjson.dumps(orjson.loads(bundle), option=orjson.OPT_INDENT_2)
        (self.out / f"{name}.json").write_bytes(bundle + b"\n")
        self.files += 1

    def _entry(self, item: Item) -> bytes:
        request = {"method": "POST", "url": item.res_type}
        criteria = identity(item.resource)
        if criteria:
            request["ifNoneExist"] = criteria
        return orjson.dumps(
            {"fullUrl": self.ref(item.res_type, item.res_id), "resource": item.resource, "request": request}
        )

    def close(self) -> int:
        """Write what is pending, then the whole directory: pharmacies and providers nobody refers to yet too."""
        for slug in list(self.pending):
            self._flush(slug)
        entries = list(self.known.values())
        for start in range(0, len(entries), self.chunk):
            self._write(f"directory-{start // self.chunk + 1:04d}", entries[start : start + self.chunk])
        return self.files


def _writer(options: Options, ref: Callable[[str, str], str]) -> _Writer:
    if options.shape == "bundles":
        return _Bundles(options.out, options.chunk, ref, options.pretty)
    if options.shape == "ndjson":
        return _Ndjson(options.out)
    return _ResourceFiles(options.out)


def main(args: argparse.Namespace) -> int:
    """`fhir-node synth --patients N --seed S [--out DIR]`: write the scenario, report what and how fast."""
    from tqdm import tqdm

    options = Options(args.patients, args.seed, Path(args.out), args.format, args.chunk, args.pretty)
    started = time.perf_counter()
    with tqdm(total=args.patients, unit=" patients", desc="synth", disable=args.quiet) as bar:
        stats = synth(options, lambda n: bar.update(1))
    seconds = time.perf_counter() - started
    written = ", ".join(f"{n} {t}" for t, n in stats.resources.items())
    print(
        f"fhir-node synth: {stats.patients} patients in {seconds:.1f} s ({stats.patients / seconds:.0f}/s): "
        f"{written}; {stats.files} files in {options.out}"
    )
    return 0


def add_parser(sub: Any) -> None:
    """Register `synth` on the `fhir-node` command."""
    p = sub.add_parser("synth", help="generate a realistic, deterministic scenario (Bundles, resources or NDJSON)")
    p.add_argument("--patients", type=int, required=True, help="number of patients")
    p.add_argument("--seed", type=int, required=True, help="the same seed gives the same files")
    p.add_argument("--out", default="synth", help="output folder (default %(default)s)")
    p.add_argument("--format", choices=("bundles", "resources", "ndjson"), default="bundles")
    p.add_argument("--chunk", type=int, default=500, help="entries per transaction Bundle (default %(default)s)")
    p.add_argument("--pretty", action="store_true", help="indent the Bundles (for people to read)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=main)

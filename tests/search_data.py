"""The search suite's dataset and its oracle.

`generate()` builds a small but varied, deterministic (seeded) set of Patients, Organizations,
Practitioners, EpisodeOfCare, Consent, AuditEvent and CareTeam resources; `load()` writes it through the REST API
and keeps what the server answered (ids and meta.lastUpdated are the server's). Every node also serves our
published guide (profiles/, terminology/) read-only: `guide()` reads those files as they are, and they
are part of every dataset. Everything below
`# The oracle` computes what a search SHOULD return, in plain Python over those dicts and from the R4
search specification alone: it shares no code with `fhir_node.search`, so a test comparing the two
checks the server against an independent reading of the spec, not against itself.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from live_node import BASE_HOST
from starlette.testclient import TestClient

from fhir_node.app import create_app
from fhir_node.rules import billing
from fhir_node.rules.billing import BILLING_PERIOD as BILLING
from fhir_node.rules.check_digits import cbe, nihdi_organisation, nihdi_professional, ssin
from fhir_node.settings import Settings

BASE = f"{BASE_HOST}/fhir"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
ROOT = Path(__file__).resolve().parents[1]
#: The types of our published guide, which the node serves read-only from profiles/ and terminology/.
GUIDE_TYPES = (
    "StructureDefinition",
    "ValueSet",
    "CodeSystem",
    "SearchParameter",
    "NamingSystem",
    "ImplementationGuide",
    "OperationDefinition",
)

SSIN = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/ssin"
NIHDI = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/nihdi"
CBE = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/cbe"
MRN = "https://hospital.example.be/fhir/NamingSystem/mrn"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
LOINC = "http://loinc.org"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
PROGRAMME = "https://example.org/fhir/CodeSystem/care-programme"
LEGACY_PROGRAMME = "https://example.org/fhir/CodeSystem/legacy-programme"
ORG_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
LANGUAGE = "urn:ietf:bcp:47"
AUDIT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
EXTRA_SECURITY = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
TAGS = "https://example.org/fhir/tags"
PROFILE_ROOT = "https://example.org/fhir/StructureDefinition/psi"
MOTHERS_MAIDEN_NAME = "http://hl7.org/fhir/StructureDefinition/patient-extensions-Patient-mothersMaidenName"
RECORDER = "https://www.ehealth.fgov.be/standards/fhir/core/StructureDefinition/be-ext-recorder"
CONSENT_PURPOSE = "https://fhir-node.be/fhir/CodeSystem/consent-purpose"
EPISODE_IDS = "https://example.org/fhir/episode-id"
INCLUSION_STATUS = "https://fhir-node.be/fhir/CodeSystem/inclusion-status"
CONSENT_IDS = "https://example.org/fhir/consent-id"
CARE_TEAM_IDS = "https://example.org/fhir/care-team-id"

SEED = 20240501
ORDER = ("Organization", "Practitioner", "Patient", "EpisodeOfCare", "Consent", "AuditEvent", "CareTeam", "Group")


# ---------------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------------

FAMILIES = ["Dupont", "Lefèvre", "Müller", "Van den Berg", "DE SMET", "Janssens", "Peeters", "Çelik", "Dubois", "Noël"]
GIVENS = ["Élise", "Jean-Luc", "zoë", "Anaïs", "Pieter", "Ömer", "Marie", "Jérôme", "Lotte", "Benoît"]
CITIES = ["Liège", "Bruxelles", "Gent", "Namur", "Antwerpen"]
LANGUAGES = ["nl-BE", "fr-BE", "de-BE"]
BIRTH_DATES = ["1980", "1975-06", "1990-02-14", "2001-12-31", "1958-03", "1966-07-21", "1999", "1984-10-05"]
EPISODE_STATUSES = ["planned", "waitlist", "active", "onhold", "finished", "cancelled", "entered-in-error"]
PROGRAMMES = [
    ("psi-diabetes", "Diabète de type 2", "Programme diabète"),
    ("psi-copd", "BPCO", "Programme BPCO"),
    ("psi-heart-failure", "Insuffisance cardiaque", "Programme cardiaque"),
]
#: Periods chosen for the date prefixes: open ends, partial dates, zone offsets that cross a day or year.
PERIODS: list[dict[str, str] | None] = [
    {"start": "2023"},
    {"start": "2023-05"},
    {"start": "2023-05-17", "end": "2023-11-02"},
    {"start": "2024-01-01T00:30:00+02:00"},
    {"start": "2024-01-01T00:30:00+02:00", "end": "2024-01-01T01:30:00+02:00"},
    {"end": "2022-06-30"},
    {"start": "2021", "end": "2022"},
    {"start": "2022-03-15T08:00:00Z", "end": "2022-03-15T17:00:00Z"},
    {"start": "2023-02-28T23:00:00-05:00", "end": "2023-03-31"},
    {"start": "2023-12-31T23:30:00Z", "end": "2024-01-01T00:15:00+01:00"},
    None,
]
CONSENT_STATUSES = ["draft", "proposed", "active", "rejected", "inactive", "entered-in-error"]
CONSENT_DATES: list[str | None] = [
    "2023",
    "2023-06",
    "2023-06-15",
    "2023-06-15T10:00:00+02:00",
    "2024-02-29T23:59:59Z",
    "2022-11-30T23:30:00-02:00",
    None,
]
AUDIT_ACTIONS = ["C", "R", "U", "D", "E"]
AUDIT_OUTCOMES = ["0", "4", "8", "12"]
INTERACTIONS = ["read", "search-type", "create", "update"]
CARE_TEAM_STATUSES = ["proposed", "active", "suspended", "inactive", "entered-in-error"]
#: LOINC care team categories: longitudinal care coordination, episode of care.
CARE_TEAM_CATEGORIES = [("LA28865-6", "Longitudinal care-coordination focused care team"), ("LA27977-0", None)]


def _ref(res_type: str, res_id: str) -> dict[str, str]:
    return {"reference": f"{res_type}/{res_id}"}


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    return {"system": system, "code": code, **({"display": display} if display else {})}


def _cc(system: str, code: str, display: str | None = None, text: str | None = None) -> dict[str, Any]:
    return {"coding": [_coding(system, code, display)], **({"text": text} if text else {})}


def _narrative(text: str) -> dict[str, str]:
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{text}</div>'}


def _ssin(birth_date: str, serial: int) -> str:
    """A valid SSIN (check digits) for a FHIR birthDate of any precision."""
    year, month, day = ([int(p) for p in birth_date.split("-")] + [1, 1])[:3]
    return ssin(date(year, month, day), serial)


def _nihdi_professional(rng: random.Random) -> str:
    return nihdi_professional(1, rng.randrange(100_000), rng.randrange(1000))


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _meta(rng: random.Random, kind: str) -> dict[str, Any]:
    """Tags, profiles, security labels and sources on some resources, for the meta search parameters."""
    meta: dict[str, Any] = {}
    roll = rng.random()
    if roll < 0.4:
        meta["tag"] = [_coding(TAGS, rng.choice(["import-2023", "import-2024"]))]
    if roll < 0.25 or roll > 0.85:
        meta["profile"] = [f"{PROFILE_ROOT}/{kind}" if roll < 0.15 else f"{PROFILE_ROOT}/{kind}-v2"]
    if 0.3 < roll < 0.6:
        meta["security"] = [_coding(CONFIDENTIALITY, rng.choice(["R", "N"]))]
    if roll > 0.5:
        meta["source"] = rng.choice(["https://example.org/source/registry-a", "https://example.org/source/registry-b"])
    return {"meta": meta} if meta else {}


def _organizations(rng: random.Random) -> list[dict[str, Any]]:
    names = ["Réseau Santé Bruxelles", "Soins à domicile, Liège", "CHU de Namur", "Apotheek Van Gent", "PSI Vlaanderen"]
    out = []
    for i, name in enumerate(names):
        org: dict[str, Any] = {"resourceType": "Organization", "id": f"org-{i}", **_meta(rng, "organization")}
        identifiers = []
        if i != 3:
            identifiers.append({"system": NIHDI, "value": nihdi_organisation(7, rng.randrange(100_000))})
        if i % 2 == 0:
            identifiers.append({"system": CBE, "value": cbe(rng.randrange(1, 20_000_000))})
        if identifiers:
            org["identifier"] = identifiers
        org["active"] = i not in (2, 4)
        org["type"] = [_cc(ORG_TYPE, "prov" if i != 4 else "govt", "Healthcare Provider" if i != 4 else "Government")]
        org["name"] = name
        if i == 0:
            org["alias"] = ["RSB", "Brussels Health Network"]
        org["address"] = [
            {
                "use": "billing" if i == 3 else "work",
                "city": CITIES[i],
                "postalCode": f"{1000 + 1000 * i}",
                "country": "NL" if i == 3 else "BE",
                **({"state": "Vlaanderen"} if i in (3, 4) else {}),
            }
        ]
        if i in (1, 2):
            org["partOf"] = _ref("Organization", "org-0")
        if i == 4:
            org["endpoint"] = [_ref("Endpoint", "ep-1")]
        out.append(org)
    return out


def _practitioners(rng: random.Random) -> list[dict[str, Any]]:
    names = [("Martin", "Ève"), ("Claes", "Wouter"), ("Lambert", "Sophie"), ("Maes", "Thomas"), ("Ngoma", "Aline")]
    out = []
    for i, (family, given) in enumerate(names):
        p: dict[str, Any] = {"resourceType": "Practitioner", "id": f"prac-{i}", **_meta(rng, "practitioner")}
        p["identifier"] = [{"system": NIHDI, "value": _nihdi_professional(rng)}]
        p["active"] = i != 3
        p["name"] = [{"family": family, "given": [given], **({"prefix": ["Dr."]} if i % 2 == 0 else {})}]
        p["telecom"] = [
            {"system": "phone", "value": f"+32 2 {_digits(rng, 3)} {_digits(rng, 2)} {_digits(rng, 2)}"},
            *([{"system": "email", "value": f"{family.lower()}@example.be"}] if i != 1 else []),
        ]
        if i != 4:
            p["address"] = [
                {
                    "use": "work",
                    "city": CITIES[(i + 2) % 5],
                    "postalCode": f"{1000 + 10 * i}",
                    "country": "BE",
                    "state": "BXL",
                }
            ]
        p["gender"] = ["female", "male", "female", "male", "female"][i]
        p["communication"] = [_cc(LANGUAGE, LANGUAGES[i % 3])]
        out.append(p)
    return out


def _patients(rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for i in range(10):
        p: dict[str, Any] = {"resourceType": "Patient", "id": f"pat-{i:02d}", **_meta(rng, "patient")}
        birth = BIRTH_DATES[i % len(BIRTH_DATES)]
        ids: list[dict[str, Any]] = [{"system": SSIN, "value": _ssin(birth, rng.randrange(1, 999))}]
        if i % 3 == 0:
            ids.append(
                {
                    "type": {"coding": [_coding(V2_0203, "MR")], "text": "Numéro de dossier"},
                    "system": MRN,
                    "value": f"MRN-{_digits(rng, 5)}",
                }
            )
        p["identifier"] = ids
        if i != 9:
            p["active"] = i % 4 != 1
        name: dict[str, Any] = {"family": FAMILIES[i], "given": [GIVENS[i]]}
        if i == 2:
            name["given"].append("Sophie")
        if i == 5:
            name["text"] = "Ömer Çelik"
        p["name"] = [name]
        if i in (0, 4):
            p["name"].append({"use": "maiden", "family": "Lejeune"})
        if i != 7:
            p["gender"] = ["female", "male", "female", "male", "other", "unknown"][i % 6]
        p["birthDate"] = birth
        telecom = []
        if i % 2 == 0:
            telecom.append({"system": "phone", "value": f"+32 4{_digits(rng, 2)} {_digits(rng, 2)} {_digits(rng, 2)}"})
        if i % 3 == 1:
            telecom.append({"system": "email", "value": f"patient{i}@mail.example.be"})
        if telecom:
            p["telecom"] = telecom
        if i == 3:
            p["deceasedBoolean"] = True
        elif i == 5:  # with no running inclusion: the node would close them (rules/death.py)
            p["deceasedDateTime"] = "2023-08-14T09:30:00+02:00"
        elif i == 8:
            p["deceasedBoolean"] = False
        if i != 1:
            city = CITIES[i % 5]
            p["address"] = [
                {
                    "use": "home" if i % 2 else "temp",
                    "line": [f"Rue {FAMILIES[(i + 3) % 10]} {i + 1}"],
                    "city": city,
                    "state": "Wallonie" if city in ("Liège", "Namur") else "Vlaanderen",
                    "postalCode": f"{4000 + 10 * i}",
                    "country": "BE" if i != 4 else "FR",
                }
            ]
        p["communication"] = [{"language": _cc(LANGUAGE, LANGUAGES[i % 3])}]
        if i % 3 != 2:
            p["generalPractitioner"] = [
                _ref("Practitioner", f"prac-{i % 5}") if i % 4 else _ref("Organization", "org-2")
            ]
        if i % 5 != 4:
            p["managingOrganization"] = _ref("Organization", f"org-{i % 4}")
        if i == 7:
            p["link"] = [{"other": _ref("Patient", "pat-02"), "type": "seealso"}]
        if i % 2 == 0:
            p["text"] = _narrative(f"{GIVENS[i]} {FAMILIES[i]}")
        if i in (2, 5):
            p["extension"] = [{"url": MOTHERS_MAIDEN_NAME, "valueString": ["Lemaître", "Wouters"][i // 5]}]
        out.append(p)
    return out


def _episodes(rng: random.Random, patients: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i in range(60):
        e: dict[str, Any] = {"resourceType": "EpisodeOfCare", "id": f"eoc-{i:02d}", **_meta(rng, "episode")}
        if i % 4 != 3:
            e["identifier"] = [{"system": EPISODE_IDS, "value": f"E-{i:04d}"}]
        e["status"] = EPISODE_STATUSES[rng.randrange(len(EPISODE_STATUSES))] if i >= 7 else EPISODE_STATUSES[i]
        code, display, text = PROGRAMMES[i % 3]
        if i % 10 == 9:
            e["type"] = [{"text": text}]
        elif i % 10 == 8:
            e["type"] = [{"coding": [{"code": code}]}]
        else:
            concept = _cc(PROGRAMME, code, display, text if i % 2 else None)
            if i % 7 == 0:
                concept["coding"].append(_coding(LEGACY_PROGRAMME, PROGRAMMES[(i + 1) % 3][0]))
            e["type"] = [concept]
        patient = patients[rng.randrange(len(patients))]
        e["patient"] = _ref("Patient", patient["id"])
        if i % 6 == 0:
            e["patient"]["identifier"] = patient["identifier"][0]
        if i % 5 != 4:
            e["managingOrganization"] = _ref("Organization", f"org-{rng.randrange(5)}")
        if i % 9 == 4:
            e["careManager"] = _ref("PractitionerRole", "role-1")
        elif i % 3 != 2:
            e["careManager"] = _ref("Practitioner", f"prac-{rng.randrange(5)}")
        if i % 4 == 1:
            e["extension"] = [{"url": RECORDER, "valueReference": _ref("Practitioner", f"prac-{i % 5}")}]
        period = PERIODS[i] if i < len(PERIODS) else _random_period(rng)
        if period is not None:
            e["period"] = period
        if i % 5 == 0:
            e["text"] = _narrative(f"Episode {i} ({code})")
        if i % 8 == 1:
            e["diagnosis"] = [{"condition": _ref("Condition", f"cond-{i}")}]
        if i % 11 == 2:
            e["referralRequest"] = [_ref("ServiceRequest", f"sr-{i}")]
        if i in (2, 13, 20):  # principal inclusions (of different patients): the node stamps their billing period
            e["type"].append(_cc(INCLUSION_STATUS, "principal", "principal", None))
        out.append(billing.stamped(e))
    return out


def _random_period(rng: random.Random) -> dict[str, str] | None:
    if rng.random() < 0.08:
        return None
    start = datetime(2020, 1, 1) + timedelta(days=rng.randrange(6 * 365))
    shape = rng.randrange(4)
    if shape == 0:
        return {"start": start.strftime("%Y-%m-%d")}
    if shape == 1:
        return {"start": start.strftime("%Y-%m")}
    end = start + timedelta(days=rng.randrange(1, 500), hours=rng.randrange(24))
    if shape == 2:
        return {"start": start.strftime("%Y-%m-%d"), "end": end.strftime("%Y-%m-%d")}
    zone = rng.choice(["Z", "+01:00", "+02:00", "-04:00"])
    return {"start": start.strftime("%Y-%m-%dT%H:%M:%S") + zone, "end": end.strftime("%Y-%m-%dT%H:%M:%S") + zone}


def _consents(rng: random.Random, patients: list[dict[str, Any]], episodes: list[dict[str, Any]]) -> list[dict]:
    out: list[dict[str, Any]] = []
    for i in range(30):
        c: dict[str, Any] = {"resourceType": "Consent", "id": f"consent-{i:02d}", **_meta(rng, "consent")}
        c["identifier"] = [{"system": CONSENT_IDS, "value": f"C-{i:04d}"}]
        c["status"] = CONSENT_STATUSES[i % len(CONSENT_STATUSES)] if i < 12 else rng.choice(CONSENT_STATUSES[:5])
        scope = ["research", "research", "patient-privacy", "treatment"][i % 4]
        c["scope"] = _cc(CONSENT_SCOPE, scope)
        c["category"] = [_cc(LOINC, "59284-0", "Patient Consent")]
        if i % 5 == 0:
            c["category"].append(_cc(LOINC, "57016-8", "Privacy policy acknowledgment Document"))
        if i != 29:
            c["patient"] = _ref("Patient", patients[rng.randrange(len(patients))]["id"])
        when = CONSENT_DATES[i] if i < len(CONSENT_DATES) else _random_instant(rng, 2021, 2025)
        if when is not None:
            c["dateTime"] = when
        performer = [
            _ref("Patient", c["patient"]["reference"].split("/")[1]) if "patient" in c else None,
            _ref("Practitioner", f"prac-{i % 5}"),
            _ref("Organization", f"org-{i % 5}"),
        ][i % 3]
        if performer is not None and i % 7 != 6:
            c["performer"] = [performer]
        if i % 4 != 3:
            c["organization"] = [_ref("Organization", f"org-{(i * 3) % 5}")]
        if i % 6 == 5 and out:
            c["sourceReference"] = _ref("Consent", out[rng.randrange(len(out))]["id"])
        c["policyRule"] = _cc(ACT_CODE, "OPTIN" if i % 2 else "OPTOUT")
        c["provision"] = _provision(rng, i, episodes)
        out.append(c)
    return out


def _provision(rng: random.Random, i: int, episodes: list[dict[str, Any]]) -> dict[str, Any]:
    provision: dict[str, Any] = {"type": "permit" if i % 3 else "deny"}
    if i % 4 != 1:
        provision["purpose"] = [_coding(ACT_REASON, "HRESCH" if i % 5 else "HPAYMT")]
    if i % 3 == 1:
        start = _random_instant(rng, 2022, 2024)[:10]
        provision["period"] = {"start": start} if i % 2 else {"start": start, "end": "2025-12-31"}
    if i % 4 == 2:
        provision["actor"] = [
            {
                "role": _cc(PARTICIPATION, "PRCP", "primary information recipient"),
                "reference": _ref("Organization", f"org-{i % 5}"),
            }
        ]
    if i % 2 == 0:
        provision["action"] = [_cc(CONSENT_ACTION, ["access", "collect", "use"][i % 3])]
    if i % 5 == 3:
        provision["securityLabel"] = [_coding(CONFIDENTIALITY, "R")]
    if i % 6 == 1:
        provision["data"] = [{"meaning": "related", "reference": _ref("EpisodeOfCare", episodes[i]["id"])}]
    if i % 7 == 3:
        provision["provision"] = [{"type": "deny", "purpose": [_coding(CONSENT_PURPOSE, "statistics")]}]
    return provision


def _random_instant(rng: random.Random, first: int, last: int) -> str:
    moment = datetime(first, 1, 1) + timedelta(seconds=rng.randrange((last - first + 1) * 365 * 86400))
    zone = rng.choice(["Z", "+01:00", "+02:00", "-03:00"])
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + zone


def _audit_events(rng: random.Random, patients: list[dict], episodes: list[dict], consents: list[dict]) -> list[dict]:
    out = []
    for i in range(20):
        a: dict[str, Any] = {"resourceType": "AuditEvent", **_meta(rng, "audit")}
        a["type"] = _coding(AUDIT_TYPE, "rest", "RESTful Operation") if i % 4 else _coding(DICOM, "110112", "Query")
        a["subtype"] = [_coding(RESTFUL, INTERACTIONS[i % 4])]
        a["action"] = AUDIT_ACTIONS[i % 5]
        recorded = datetime(2024, 3, 1, 8) + timedelta(hours=7 * i, minutes=rng.randrange(60))
        zone = ["Z", "+01:00", "-05:00"][i % 3]
        a["recorded"] = recorded.strftime("%Y-%m-%dT%H:%M:%S") + (".250" if i % 4 == 1 else "") + zone
        a["outcome"] = AUDIT_OUTCOMES[i % 4] if i % 6 else "0"
        a["agent"] = [_audit_agent(rng, i, patients)]
        if i % 5 == 2:
            a["agent"].append({"who": _ref("Patient", patients[(i + 1) % 10]["id"]), "requestor": False})
        a["source"] = {
            "site": ["node-brussels", "node-liege"][i % 2],
            "observer": _ref("Organization", f"org-{i % 5}") if i % 3 else _ref("Practitioner", f"prac-{i % 5}"),
            "type": [_coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4")],
        }
        entity: list[dict[str, Any]] = [
            {
                "what": _ref("Patient", patients[i % 10]["id"]),
                "type": _coding(ENTITY_TYPE, "1", "Person"),
                "role": _coding(OBJECT_ROLE, "1", "Patient"),
                "name": f"Dossier {patients[i % 10]['name'][0]['family']}",
            }
        ]
        if i % 3 == 0:
            target = episodes[i] if i % 2 else consents[i]
            entity.append({"what": _ref(target["resourceType"], target["id"]), "type": _coding(ENTITY_TYPE, "2")})
        if i == 13:
            entity = [{"what": {"reference": "https://other.example.org/fhir/Patient/ext-1"}, "name": "Extern"}]
        a["entity"] = entity
        out.append(a)
    return out


def _audit_agent(rng: random.Random, i: int, patients: list[dict]) -> dict[str, Any]:
    agent: dict[str, Any] = {
        "type": _cc(EXTRA_SECURITY, "humanuser" if i % 3 else "datacollector"),
        "role": [_cc(PARTICIPATION, "AUT" if i % 2 else "INF")],
        "requestor": True,
    }
    if i % 7 == 3:
        agent["who"] = {"type": "Practitioner", "identifier": {"system": NIHDI, "value": _nihdi_professional(rng)}}
    elif i % 4 == 2:
        agent["who"] = _ref("Patient", patients[i % 10]["id"])
    else:
        agent["who"] = _ref("Practitioner", f"prac-{i % 5}")
    if i % 2:
        agent["altId"] = f"alt-{i % 4}"
    agent["name"] = ["Ève Martin", "Wouter Claes", "Portail Patient"][i % 3]
    if i % 4 != 0:
        agent["network"] = {"address": f"10.0.{i % 3}.{10 + i}", "type": "2"}
    if i % 3 == 1:
        agent["policy"] = ["https://example.org/policy/research", "https://example.org/policy/research/psi"][i % 2 :]
    return agent


def _care_teams(rng: random.Random, patients: list[dict], practitioners: list[dict]) -> list[dict[str, Any]]:
    """Therapeutic relationships: the subject a Patient (by reference, or by SSIN alone) or a Group; members
    Practitioners and Organizations, by reference or by NIHDI number, with their periods."""
    out = []
    for i in range(12):
        t: dict[str, Any] = {"resourceType": "CareTeam", "id": f"ct-{i:02d}", **_meta(rng, "careteam")}
        if i % 4 != 3:
            t["identifier"] = [{"system": CARE_TEAM_IDS, "value": f"T-{i:04d}"}]
        if i % 6 != 5:
            t["status"] = CARE_TEAM_STATUSES[i % 5]
        if i % 3 != 2:
            t["category"] = [_cc(LOINC, *CARE_TEAM_CATEGORIES[i % 2])]
        patient = patients[i % 10]
        if i == 11:
            t["subject"] = _ref("Group", "grp-1")
        elif i % 5 == 4:
            t["subject"] = {"type": "Patient", "identifier": patient["identifier"][0]}
        else:
            t["subject"] = _ref("Patient", patient["id"])
        if i % 4 == 1:
            t["encounter"] = _ref("Encounter", f"enc-{i}")
        period = _random_period(rng) if i % 3 != 2 else None
        if period is not None:
            t["period"] = period
        if i != 7:
            members = [_ref("Practitioner", f"prac-{i % 5}")]
            if i % 2 == 0:
                members.append(_ref("Organization", f"org-{i % 5}"))
            if i % 5 == 2:
                members.append({"type": "Practitioner", "identifier": practitioners[(i + 1) % 5]["identifier"][0]})
            t["participant"] = [{"member": m} for m in members]
            for p in t["participant"] if i % 2 else []:
                if (period := _random_period(rng)) is not None:
                    p["period"] = period
        out.append(t)
    return out


def _groups(patients: list[dict]) -> list[dict[str, Any]]:
    """Cohorts for Group-level export: actual groups of Patients (some members inactive)."""
    metas: list[dict[str, Any]] = [
        {"tag": [_coding(TAGS, "import-2023")], "profile": [f"{PROFILE_ROOT}/group"]},
        {"security": [_coding(CONFIDENTIALITY, "R")], "source": "https://example.org/source/registry-a"},
        {"tag": [_coding(TAGS, "import-2024")]},
        {},
        {"profile": [f"{PROFILE_ROOT}/group-v2"], "source": "https://example.org/source/registry-b"},
        {"security": [_coding(CONFIDENTIALITY, "N")]},
    ]
    out = []
    for i, meta in enumerate(metas):
        g: dict[str, Any] = {"resourceType": "Group", "id": f"cohort-{i}", "type": "person", "actual": True}
        if meta:
            g["meta"] = meta
        g["member"] = [{"entity": _ref("Patient", p["id"]), "inactive": j == 1} for j, p in enumerate(patients[i::3])]
        out.append(g)
    return out


def generate(seed: int = SEED) -> dict[str, list[dict[str, Any]]]:
    """The dataset, by type, in load order; the same seed always gives the same resources."""
    rng = random.Random(seed)
    organizations = _organizations(rng)
    practitioners = _practitioners(rng)
    patients = _patients(rng)
    episodes = _episodes(rng, patients)
    consents = _consents(rng, patients, episodes)
    audits = _audit_events(rng, patients, episodes, consents)
    care_teams = _care_teams(rng, patients, practitioners)
    groups = _groups(patients)
    return {
        "Organization": organizations,
        "Practitioner": practitioners,
        "Patient": patients,
        "EpisodeOfCare": episodes,
        "Consent": consents,
        "AuditEvent": audits,
        "CareTeam": care_teams,
        "Group": groups,
    }


# ---------------------------------------------------------------------------------------------------
# Loading through the API
# ---------------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """The resources as the server stored them (its ids, meta.versionId/lastUpdated), by type and id."""

    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def ids(self, res_type: str) -> set[str]:
        return set(self.resources.get(res_type, {}))

    def get(self, res_type: str, res_id: str) -> dict[str, Any] | None:
        return self.resources.get(res_type, {}).get(res_id)

    def of(self, res_type: str) -> list[dict[str, Any]]:
        return list(self.resources.get(res_type, {}).values())

    def keep(self, resource: dict[str, Any]) -> None:
        self.resources.setdefault(resource["resourceType"], {})[resource["id"]] = resource


def write(client: TestClient, resource: dict[str, Any]) -> dict[str, Any]:
    """PUT when the resource has an id, POST otherwise; the stored resource the server answers with."""
    body = orjson.dumps(resource)
    res_type = resource["resourceType"]
    if "id" in resource:
        r = client.put(f"/fhir/{res_type}/{resource['id']}", content=body, headers=FHIR_JSON)
    else:
        r = client.post(f"/fhir/{res_type}", content=body, headers=FHIR_JSON)
    assert r.status_code in (200, 201), r.text
    return r.json()


def load(client: TestClient, data: dict[str, list[dict[str, Any]]] | None = None) -> Dataset:
    """Write the dataset (AuditEvents, append-only, are POSTed and get server ids) and keep what was stored,
    with the published guide the node holds already."""
    data = data if data is not None else generate()
    loaded = Dataset()
    for res_type in ORDER:
        for resource in data.get(res_type, []):
            loaded.keep(write(client, resource))
    for resource in guide():
        loaded.keep(served_file(client, resource))
    return loaded


def guide() -> list[dict[str, Any]]:
    """Our published guide's resources, read from profiles/ and terminology/ as plain JSON."""
    paths = sorted([*(ROOT / "profiles").glob("*.json"), *(ROOT / "terminology").glob("*.json")])
    return [r for r in (orjson.loads(p.read_bytes()) for p in paths) if r["resourceType"] in GUIDE_TYPES]


def served_file(client: TestClient, resource: dict[str, Any]) -> dict[str, Any]:
    """A published resource as the node serves it, which must be its file plus the server's meta."""
    r = client.get(f"/fhir/{resource['resourceType']}/{resource['id']}")
    assert r.status_code == 200, r.text
    served = r.json()
    meta = {k: v for k, v in served["meta"].items() if k not in ("versionId", "lastUpdated")}
    assert {**{k: v for k, v in served.items() if k != "meta"}, **({"meta": meta} if meta else {})} == resource
    return served


# ---------------------------------------------------------------------------------------------------
# Talking to the server
# ---------------------------------------------------------------------------------------------------


def query(text: str) -> list[tuple[str, str]]:
    """`a=1&b:x=2,3` as (name, value) pairs, values taken literally (no percent-decoding), so tests can
    write `+02:00` and `|` as they are; the HTTP client encodes them."""
    if not text:
        return []
    return [(name, value) for name, _, value in (part.partition("=") for part in text.split("&"))]


def search(client: TestClient, res_type: str | None, params: str | list[tuple[str, str]], **kw: Any) -> dict:
    """One page of a search, which must succeed."""
    pairs = query(params) if isinstance(params, str) else params
    r = client.get(f"/fhir/{res_type}" if res_type else "/fhir", params=pairs, **kw)
    assert r.status_code == 200, f"{res_type}?{params}: {r.status_code} {r.text}"
    return r.json()


def entries(bundle: dict[str, Any], mode: str = "match") -> list[dict[str, Any]]:
    return [e for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == mode]


def match_ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in entries(bundle, mode)]


def typed_ids(bundle: dict[str, Any], mode: str = "match") -> list[tuple[str, str]]:
    return [(e["resource"]["resourceType"], e["resource"]["id"]) for e in entries(bundle, mode)]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((lk["url"] for lk in bundle.get("link", []) if lk["relation"] == relation), None)


def pages(client: TestClient, first: dict[str, Any], relation: str = "next", limit: int = 200) -> Iterator[dict]:
    """`first`, then each page its `relation` links lead to."""
    bundle: dict[str, Any] | None = first
    for _ in range(limit):
        if bundle is None:
            return
        yield bundle
        url = link(bundle, relation)
        if url is None:
            return
        assert url.startswith(BASE), url
        r = client.get(url)
        assert r.status_code == 200, r.text
        bundle = r.json()
    raise AssertionError(f"more than {limit} pages")


def all_match_ids(client: TestClient, res_type: str | None, params: str) -> list[tuple[str, str]]:
    """Every match of a search, following next links."""
    first = search(client, res_type, params)
    return [t for page in pages(client, first) for t in typed_ids(page)]


# ---------------------------------------------------------------------------------------------------
# The oracle: R4 search semantics over plain dicts
# ---------------------------------------------------------------------------------------------------

MIN = datetime.min
MAX = datetime.max
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
CONTACT_SYSTEMS = {"phone", "fax", "email", "pager", "url", "sms", "other"}
RESULT_PARAMETERS = {
    "_sort", "_count", "_total", "_summary", "_elements", "_include", "_revinclude", "_type", "_cursor",
    "_include:iterate", "_revinclude:iterate",
}  # fmt: skip


def fold(text: str) -> str:
    """R4 string search ignores case and accents: decompose, drop the combining marks, case-fold."""
    return "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c)).casefold()


_FHIR_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def fhir_range(text: str) -> tuple[datetime, datetime] | None:
    """The instants a date/dateTime/instant covers, as naive UTC [first, last] (last = next - 1 µs).
    Values without a time (or a zone) are read as UTC days, months or years."""
    m = _FHIR_DATE.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    try:
        first = datetime(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0))
    except ValueError:
        return None
    if second is not None:
        first = first.replace(second=int(second), microsecond=int((fraction or "0")[:6].ljust(6, "0")))
    if fraction:
        step = timedelta(microseconds=10 ** (6 - min(len(fraction), 6)))
    elif second is not None:
        step = timedelta(seconds=1)
    elif minute is not None:
        step = timedelta(minutes=1)
    elif day is not None:
        step = timedelta(days=1)
    else:
        step = None
    if step is not None:
        after = first + step
    elif month is not None:
        after = datetime(first.year + first.month // 12, first.month % 12 + 1, 1)
    else:
        after = datetime(first.year + 1, 1, 1)
    if zone and zone != "Z":
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])) * (1 if zone[0] == "+" else -1)
        first, after = first - offset, after - offset
    return first, after - timedelta(microseconds=1)


def approx_margin(search_low: datetime, factor: float = 1.0) -> timedelta:
    """R4's recommendation for `ap` on dates: 10% of the gap between now and the date."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return abs(now - search_low) * 0.1 * factor


def date_matches(
    prefix: str, search: tuple[datetime, datetime], target: tuple[datetime, datetime], ap_factor: float = 1.0
) -> bool:
    """R4 3.1.1.4.2 (prefixes on ranges): `target` is the value's [low, high], MIN/MAX for open ends."""
    slo, shi = search
    lo, hi = target
    contained = slo <= lo and hi <= shi
    if prefix == "eq":
        return contained
    if prefix == "ne":
        return not contained
    if prefix == "gt":
        return hi > shi
    if prefix == "lt":
        return lo < slo
    if prefix == "ge":
        return hi > shi or contained
    if prefix == "le":
        return lo < slo or contained
    if prefix == "sa":
        return lo > shi
    if prefix == "eb":
        return hi < slo
    if prefix == "ap":
        margin = approx_margin(slo, ap_factor)
        return lo <= shi + margin and hi >= slo - margin
    raise ValueError(prefix)


def date_ranges(element: Any) -> list[tuple[datetime, datetime]]:
    """A date/dateTime/instant string, or a Period whose missing start or end is open."""
    if isinstance(element, str):
        found = fhir_range(element)
        return [found] if found else []
    if isinstance(element, dict) and ("start" in element or "end" in element):
        start = fhir_range(element["start"]) if "start" in element else None
        end = fhir_range(element["end"]) if "end" in element else None
        return [(start[0] if start else MIN, end[1] if end else MAX)]
    return []


@dataclass(frozen=True)
class Token:
    """One searchable code: system|code, the texts `:text` looks at, and an Identifier's type codings."""

    system: str | None
    code: str | None
    texts: tuple[str, ...] = ()
    types: tuple[tuple[str | None, str | None], ...] = ()


def tokens(element: Any) -> list[Token]:
    """R4 3.1.1.4.10: code, boolean, string, Coding, CodeableConcept, Identifier, ContactPoint."""
    if isinstance(element, bool):
        return [Token(None, "true" if element else "false")]
    if isinstance(element, str):
        return [Token(None, element)]
    if not isinstance(element, dict):
        return []
    if "coding" in element or set(element) == {"text"}:
        found = [t for coding in element.get("coding", []) for t in tokens(coding)]
        return [*found, Token(None, None, (element["text"],))] if "text" in element else found
    if "value" in element and element.get("system") in CONTACT_SYSTEMS:
        return [Token(None, element["value"])]
    if "value" in element:
        kind = element.get("type", {})
        types = tuple((c.get("system"), c.get("code")) for c in kind.get("coding", []))
        return [Token(element.get("system"), element["value"], tuple(filter(None, [kind.get("text")])), types)]
    return [Token(element.get("system"), element.get("code"), tuple(filter(None, [element.get("display")])))]


def strings(element: Any) -> list[str]:
    """A string, or the parts of a HumanName or Address R4 says a string search looks at."""
    if isinstance(element, str):
        return [element]
    if not isinstance(element, dict):
        return []
    keys = ("text", "family", "given", "prefix", "suffix", "line", "city", "district", "state", "postalCode", "country")
    out: list[str] = []
    for key in keys:
        value = element.get(key)
        out += value if isinstance(value, list) else [value] if isinstance(value, str) else []
    return out


@dataclass(frozen=True)
class Ref:
    """A reference as search sees it: a local Type/id, another URL, and/or a logical identifier."""

    res_type: str | None = None
    res_id: str | None = None
    url: str | None = None
    system: str | None = None
    value: str | None = None


_LOCAL = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/.+)?")


def refs(element: Any) -> list[Ref]:
    if isinstance(element, str):
        return [Ref(url=element)]
    if not isinstance(element, dict):
        return []
    out = []
    text = element.get("reference")
    if text:
        local = _LOCAL.fullmatch(text[len(BASE) + 1 :] if text.startswith(BASE + "/") else text)
        out.append(Ref(local.group(1), local.group(2)) if local else Ref(url=text))
    ident = element.get("identifier")
    if ident:
        out.append(Ref(element.get("type"), None, None, ident.get("system"), ident.get("value")))
    return out


def _walk(items: list[Any], path: str) -> list[Any]:
    for key in path.split("."):
        nxt: list[Any] = []
        for item in items:
            value = item.get(key) if isinstance(item, dict) else None
            nxt += value if isinstance(value, list) else [] if value is None else [value]
        items = nxt
    return items


def at(*paths: str) -> Callable[[dict[str, Any]], list[Any]]:
    """The elements at dotted paths (arrays flattened), as FHIRPath's simple navigation gives them."""
    return lambda r: [v for p in paths for v in _walk([r], p)]


def _telecom(system: str) -> Callable[[dict[str, Any]], list[Any]]:
    return lambda r: [t for t in r.get("telecom", []) if t.get("system") == system]


def _deceased(r: dict[str, Any]) -> list[Any]:
    """`deceased.exists() and deceased != false`: a dateTime counts as deceased; absent as not."""
    return [r.get("deceasedBoolean", True) if ("deceasedBoolean" in r or "deceasedDateTime" in r) else False]


def _extension(url: str) -> Callable[[dict[str, Any]], list[Any]]:
    return lambda r: [e["valueString"] for e in r.get("extension", []) if e.get("url") == url and "valueString" in e]


def _to(res_type: str, *paths: str) -> Callable[[dict[str, Any]], list[Any]]:
    """References at `paths` to a `res_type` (`.where(resolve() is Type)`): a literal reference, here or on
    another server, says its target's type in its last two segments."""
    tail = re.compile(rf"(?:^|.*/){res_type}/[A-Za-z0-9\-.]{{1,64}}(?:/_history/.+)?")
    return lambda r: [v for v in at(*paths)(r) if isinstance(v, dict) and tail.fullmatch(v.get("reference", ""))]


def _recorder(r: dict[str, Any]) -> list[Any]:
    return [e["valueReference"] for e in r.get("extension", []) if e.get("url") == RECORDER and "valueReference" in e]


def _purposes(r: dict[str, Any]) -> list[Any]:
    """The purposes of every provision, nested ones included (our provision-purpose parameter)."""
    found, level = [], [r["provision"]] if "provision" in r else []
    while level:
        found += [p for x in level for p in x.get("purpose", [])]
        level = [n for x in level for n in x.get("provision", [])]
    return found


def _source(r: dict[str, Any]) -> list[Any]:
    return [r["sourceReference"]] if "sourceReference" in r else []


COMMON: dict[str, tuple[str, Callable[[dict[str, Any]], list[Any]]]] = {
    "_id": ("token", lambda r: [r["id"]]),
    "_lastUpdated": ("date", at("meta.lastUpdated")),
    "_profile": ("uri", at("meta.profile")),
    "_security": ("token", at("meta.security")),
    "_source": ("uri", at("meta.source")),
    "_tag": ("token", at("meta.tag")),
}
_ADDRESS = {
    "address": ("string", at("address")),
    "address-city": ("string", at("address.city")),
    "address-country": ("string", at("address.country")),
    "address-postalcode": ("string", at("address.postalCode")),
    "address-state": ("string", at("address.state")),
    "address-use": ("token", at("address.use")),
}
_PERSON = {
    **_ADDRESS,
    "active": ("token", at("active")),
    "email": ("token", _telecom("email")),
    "family": ("string", at("name.family")),
    "gender": ("token", at("gender")),
    "given": ("string", at("name.given")),
    "identifier": ("token", at("identifier")),
    "name": ("string", at("name")),
    "phone": ("token", _telecom("phone")),
    "phonetic": ("string", at("name")),  # phonetic matching is the server's choice; R4 requires none
    "telecom": ("token", at("telecom")),
}
#: The official conformance-* parameters, on all six types of the guide (R4 names the types each applies to).
_CONFORMANCE = {
    "context": ("token", at("useContext.valueCodeableConcept")),
    "context-quantity": ("quantity", at("useContext.valueQuantity", "useContext.valueRange")),
    "context-type": ("token", at("useContext.code")),
    "date": ("date", at("date")),
    "description": ("string", at("description")),
    "jurisdiction": ("token", at("jurisdiction")),
    "name": ("string", at("name")),
    "publisher": ("string", at("publisher")),
    "status": ("token", at("status")),
}
_CANONICAL = {"url": ("uri", at("url")), "version": ("token", at("version"))}  # not on NamingSystem
_TITLED = {"identifier": ("token", at("identifier")), "title": ("string", at("title"))}  # CodeSystem, SD, ValueSet
#: Every search parameter of every served type: (R4 type, the elements its expression selects).
PARAMS: dict[str, dict[str, tuple[str, Callable[[dict[str, Any]], list[Any]]]]] = {
    "Patient": {
        **COMMON,
        **_PERSON,
        "birthdate": ("date", at("birthDate")),
        "death-date": ("date", at("deceasedDateTime")),
        "deceased": ("token", _deceased),
        "general-practitioner": ("reference", at("generalPractitioner")),
        "language": ("token", at("communication.language")),
        "link": ("reference", at("link.other")),
        "mothersMaidenName": ("string", _extension(MOTHERS_MAIDEN_NAME)),
        "organization": ("reference", at("managingOrganization")),
    },
    "Practitioner": {**COMMON, **_PERSON, "communication": ("token", at("communication"))},
    "Organization": {
        **COMMON,
        **_ADDRESS,
        "active": ("token", at("active")),
        "endpoint": ("reference", at("endpoint")),
        "identifier": ("token", at("identifier")),
        "name": ("string", at("name", "alias")),
        "partof": ("reference", at("partOf")),
        "phonetic": ("string", at("name")),
        "type": ("token", at("type")),
    },
    "EpisodeOfCare": {
        **COMMON,
        "care-manager": ("reference", _to("Practitioner", "careManager")),
        "condition": ("reference", at("diagnosis.condition")),
        "date": ("date", at("period")),
        "identifier": ("token", at("identifier")),
        "incoming-referral": ("reference", at("referralRequest")),
        "organization": ("reference", at("managingOrganization")),
        "patient": ("reference", at("patient")),
        "billing-period": ("date", lambda r: [e["valuePeriod"] for e in r.get("extension", []) if e["url"] == BILLING]),
        "recorder": ("reference", _recorder),
        "status": ("token", at("status")),
        "type": ("token", at("type")),
    },
    "Consent": {
        **COMMON,
        "action": ("token", at("provision.action")),
        "actor": ("reference", at("provision.actor.reference")),
        "category": ("token", at("category")),
        "consentor": ("reference", at("performer")),
        "data": ("reference", at("provision.data.reference")),
        "date": ("date", at("dateTime")),
        "identifier": ("token", at("identifier")),
        "organization": ("reference", at("organization")),
        "patient": ("reference", at("patient")),
        "period": ("date", at("provision.period")),
        "provision-purpose": ("token", _purposes),
        "provision-type": ("token", at("provision.type")),
        "purpose": ("token", at("provision.purpose")),
        "scope": ("token", at("scope")),
        "security-label": ("token", at("provision.securityLabel")),
        "source-reference": ("reference", _source),
        "status": ("token", at("status")),
    },
    "AuditEvent": {
        **COMMON,
        "action": ("token", at("action")),
        "address": ("string", at("agent.network.address")),
        "agent": ("reference", at("agent.who")),
        "agent-name": ("string", at("agent.name")),
        "agent-role": ("token", at("agent.role")),
        "altid": ("token", at("agent.altId")),
        "date": ("date", at("recorded")),
        "entity": ("reference", at("entity.what")),
        "entity-name": ("string", at("entity.name")),
        "entity-role": ("token", at("entity.role")),
        "entity-type": ("token", at("entity.type")),
        "outcome": ("token", at("outcome")),
        "patient": ("reference", _to("Patient", "agent.who", "entity.what")),
        "policy": ("uri", at("agent.policy")),
        "site": ("token", at("source.site")),
        "source": ("reference", at("source.observer")),
        "subtype": ("token", at("subtype")),
        "type": ("token", at("type")),
    },
    "Group": COMMON,  # R4's Group parameters are not extracted: the node indexes only the common ones
    "CareTeam": {
        **COMMON,
        "category": ("token", at("category")),
        "date": ("date", at("period")),
        "encounter": ("reference", at("encounter")),
        "identifier": ("token", at("identifier")),
        "participant": ("reference", at("participant.member")),
        "patient": ("reference", _to("Patient", "subject")),
        "status": ("token", at("status")),
        "subject": ("reference", at("subject")),
    },
    "StructureDefinition": {
        **COMMON,
        **_CONFORMANCE,
        **_CANONICAL,
        **_TITLED,
        "abstract": ("token", at("abstract")),
        "base": ("reference", at("baseDefinition")),
        "base-path": ("token", at("snapshot.element.base.path", "differential.element.base.path")),
        "derivation": ("token", at("derivation")),
        "experimental": ("token", at("experimental")),
        "ext-context": ("token", at("context.type")),
        "keyword": ("token", at("keyword")),
        "kind": ("token", at("kind")),
        "path": ("token", at("snapshot.element.path", "differential.element.path")),
        "type": ("uri", at("type")),
        "valueset": ("reference", at("snapshot.element.binding.valueSet")),
    },
    "ValueSet": {
        **COMMON,
        **_CONFORMANCE,
        **_CANONICAL,
        **_TITLED,
        "code": ("token", at("expansion.contains.code", "compose.include.concept.code")),
        "expansion": ("uri", at("expansion.identifier")),
        "reference": ("uri", at("compose.include.system")),
    },
    "CodeSystem": {
        **COMMON,
        **_CONFORMANCE,
        **_CANONICAL,
        **_TITLED,
        "code": ("token", at("concept.code")),
        "content-mode": ("token", at("content")),
        "language": ("token", at("concept.designation.language")),
        "supplements": ("reference", at("supplements")),
        "system": ("uri", at("url")),
    },
    "SearchParameter": {
        **COMMON,
        **_CONFORMANCE,
        **_CANONICAL,
        "base": ("token", at("base")),
        "code": ("token", at("code")),
        "component": ("reference", at("component.definition")),
        "derived-from": ("reference", at("derivedFrom")),
        "target": ("token", at("target")),
        "type": ("token", at("type")),
    },
    "NamingSystem": {
        **COMMON,
        **_CONFORMANCE,
        "contact": ("string", at("contact.name")),
        "id-type": ("token", at("uniqueId.type")),
        "kind": ("token", at("kind")),
        "period": ("date", at("uniqueId.period")),
        "responsible": ("string", at("responsible")),
        "telecom": ("token", at("contact.telecom")),
        "type": ("token", at("type")),
        "value": ("string", at("uniqueId.value")),
    },
    "ImplementationGuide": {
        **COMMON,
        **_CONFORMANCE,
        **_CANONICAL,
        "depends-on": ("reference", at("dependsOn.uri")),
        "experimental": ("token", at("experimental")),
        "global": ("reference", at("global.profile")),
        "resource": ("reference", at("definition.resource.reference")),
        "title": ("string", at("title")),
    },
    #: Only the parameters R4 shares between conformance types: code, kind, instance... are not extracted.
    "OperationDefinition": {**COMMON, **_CONFORMANCE, **_CANONICAL, "title": ("string", at("title"))},
}


def values_of(res_type: str, code: str, resource: dict[str, Any]) -> list[Any]:
    """The elements parameter `code` selects in `resource`."""
    return PARAMS[res_type][code][1](resource)


def split_or(raw: str) -> list[str]:
    """Comma is OR; `\\,` a literal comma."""
    return [v.replace("\\,", ",") for v in re.split(r"(?<!\\),", raw)]


def _split_pipe(value: str) -> list[str]:
    return [p.replace("\\|", "|") for p in re.split(r"(?<!\\)\|", value)]


def token_matches(value: str, modifier: str | None, found: list[Token]) -> bool:
    if modifier == "text":
        wanted = fold(value)
        return any(fold(text).startswith(wanted) for t in found for text in t.texts)
    parts = _split_pipe(value)
    if modifier == "of-type":
        system, code, ident = parts
        return any(t.code == ident and (system, code) in t.types for t in found)
    if len(parts) == 1:
        return any(t.code == parts[0] for t in found)
    system, code = parts
    if not system:
        return any(t.system is None and t.code == code for t in found if t.code is not None)
    if not code:
        return any(t.system == system for t in found)
    return any(t.system == system and t.code == code for t in found)


def string_matches(value: str, modifier: str | None, found: list[str]) -> bool:
    if modifier == "exact":
        return value in found
    if modifier == "contains":
        return any(fold(value) in fold(s) for s in found)
    return any(fold(s).startswith(fold(value)) for s in found)


def uri_matches(value: str, modifier: str | None, found: list[str]) -> bool:
    """:below/:above compare whole path segments: `.../episode` is not above `.../episode-v2`."""
    if modifier == "below":
        return any(_under(u, value) for u in found)
    if modifier == "above":
        return any(_under(value, u) for u in found)
    return value in found


def _under(uri: str, root: str) -> bool:
    return uri == root or (uri.startswith(root) and (root.endswith("/") or uri[len(root)] == "/"))


def reference_matches(value: str, modifier: str | None, found: list[Ref]) -> bool:
    if modifier == "identifier":
        parts = _split_pipe(value)
        system, ident = (None, parts[0]) if len(parts) == 1 else parts
        return any(r.value == ident and (system is None or r.system == (system or None)) for r in found)
    if value.startswith(BASE + "/"):
        value = value[len(BASE) + 1 :]
    local = _LOCAL.fullmatch(value)
    if local:
        return any(r.res_type == local.group(1) and r.res_id == local.group(2) for r in found)
    if "/" not in value and ":" not in value:
        return any(r.res_id == value and modifier in (None, r.res_type) for r in found)
    # A canonical may carry a version (`url|1.0`): a value naming none matches every version.
    return any(r.url is not None and value in (r.url, r.url.split("|")[0]) for r in found)


@dataclass(frozen=True)
class Oracle:
    """What a search should return, computed over `dataset` (ids of one type; (type, id) for systems)."""

    dataset: Dataset
    ap_factor: float = 1.0

    def ids(self, res_type: str, params: str | list[tuple[str, str]]) -> set[str]:
        pairs = query(params) if isinstance(params, str) else params
        return {
            r["id"]
            for r in self.dataset.of(res_type)
            if all(self.satisfies(res_type, r, n, v) for n, v in pairs if n not in RESULT_PARAMETERS)
        }

    def typed(self, types: Iterable[str], params: str) -> set[tuple[str, str]]:
        return {(t, i) for t in types for i in self.ids(t, params)}

    def satisfies(self, res_type: str, resource: dict[str, Any], name: str, raw: str) -> bool:
        """One `name=raw` criterion on one resource."""
        if name.startswith("_has:"):
            _, ref_type, ref_code, rest = name.split(":", 3)
            me = Ref(res_type, resource["id"])
            return any(
                me in self.refs_of(ref_type, ref_code, other) and self.satisfies(ref_type, other, rest, raw)
                for other in self.dataset.of(ref_type)
            )
        head, dot, rest = name.partition(".")
        code, _, modifier = head.partition(":")
        if dot:
            return any(
                self.satisfies(r.res_type, target, rest, raw)
                for r in self.refs_of(res_type, code, resource)
                if r.res_type is not None and r.res_id is not None and modifier in ("", r.res_type)
                and rest.split(".")[0].split(":")[0] in PARAMS.get(r.res_type, {})
                and (target := self.dataset.get(r.res_type, r.res_id)) is not None
            )  # fmt: skip
        param_type, _ = PARAMS[res_type][code]
        found = values_of(res_type, code, resource)
        if modifier == "missing":
            return (not found) == (raw == "true")
        if modifier == "not":
            return not any(token_matches(v, None, [t for e in found for t in tokens(e)]) for v in split_or(raw))
        return any(self._matches(param_type, v, modifier or None, found) for v in split_or(raw))

    def refs_of(self, res_type: str, code: str, resource: dict[str, Any]) -> list[Ref]:
        return [r for e in values_of(res_type, code, resource) for r in refs(e)]

    def _matches(self, param_type: str, value: str, modifier: str | None, found: list[Any]) -> bool:
        if param_type == "token":
            return token_matches(value.replace("\\,", ","), modifier, [t for e in found for t in tokens(e)])
        if param_type == "string":
            return string_matches(_unescape(value), modifier, [s for e in found for s in strings(e)])
        if param_type == "uri":
            return uri_matches(_unescape(value), modifier, [u for u in found if isinstance(u, str)])
        if param_type == "reference":
            return reference_matches(value, modifier, [r for e in found for r in refs(e)])
        prefix, text = (value[:2], value[2:]) if value[:2] in PREFIXES else ("eq", value)
        wanted = fhir_range(text)
        assert wanted is not None, f"not a date: {text}"
        return any(date_matches(prefix, wanted, target, self.ap_factor) for e in found for target in date_ranges(e))

    # -- result shaping ------------------------------------------------------------------------------

    def sort_key(self, res_type: str, resource: dict[str, Any], code: str, descending: bool) -> Any:
        """The value a resource sorts by: lowest for ascending, highest for descending; None if it has none."""
        if code == "_id":
            return resource["id"]
        if code == "_lastUpdated":
            return fhir_range(resource["meta"]["lastUpdated"])
        param_type, _ = PARAMS[res_type][code]
        found = values_of(res_type, code, resource)
        if param_type == "date":
            ranges = [r for e in found for r in date_ranges(e)]
            keys = [r[1] if descending else r[0] for r in ranges]
        elif param_type == "string":
            keys = [fold(s) for e in found for s in strings(e)]
        elif param_type == "token":
            keys = [t.code for e in found for t in tokens(e) if t.code is not None]
        elif param_type == "reference":
            keys = [r.res_id for e in found for r in refs(e) if r.res_id is not None]
        else:
            keys = list(found)
        if not keys:
            return None
        return max(keys) if descending else min(keys)

    def order(self, res_type: str, ids: Iterable[str], sort: str) -> list[str]:
        """`ids` in `_sort` order: each key ascending or (`-`) descending, missing values last, then by id."""
        ordered = sorted(ids)
        for spec in reversed([s for s in sort.split(",") if s]):
            descending = spec.startswith("-")
            code = spec.lstrip("-")
            keyed = [
                (i, self.sort_key(res_type, self.dataset.get(res_type, i) or {}, code, descending)) for i in ordered
            ]
            present = sorted((k for k in keyed if k[1] is not None), key=lambda k: k[1], reverse=descending)
            ordered = [i for i, _ in present] + [i for i, k in keyed if k is None]
        return ordered

    def includes(self, matches: set[tuple[str, str]], specs: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """_include / _revinclude (`:iterate` ones also on what was included), minus the matches."""
        seen = set(matches)
        frontier = set(matches)
        first = True
        while frontier:
            found: set[tuple[str, str]] = set()
            for name, spec in specs:
                if first or name.endswith(":iterate"):
                    found |= self._include_round(name.split(":")[0], spec, frontier)
            first = False
            frontier = {f for f in found if f not in seen and self.dataset.get(*f) is not None}
            seen |= frontier
        return seen - matches

    def _include_round(self, kind: str, spec: str, frontier: set[tuple[str, str]]) -> set[tuple[str, str]]:
        source, code, target = ([*spec.split(":"), None][:3]) if spec != "*" else (None, None, None)
        out: set[tuple[str, str]] = set()
        if kind == "_include":
            for res_type, res_id in frontier:
                if source not in (None, res_type):
                    continue
                resource = self.dataset.get(res_type, res_id) or {}
                codes = (
                    [code]
                    if code and code != "*"
                    else [c for c, (t, _) in PARAMS[res_type].items() if t == "reference"]
                )
                for c in codes:
                    out |= {(r.res_type, r.res_id) for r in self.refs_of(res_type, c, resource)
                            if r.res_id and r.res_type and target in (None, r.res_type)}  # fmt: skip
            return out
        assert source is not None and code is not None
        for other in self.dataset.of(source):
            if any((r.res_type, r.res_id) in frontier for r in self.refs_of(source, code, other)):
                out.add((source, other["id"]))
        return out


def _unescape(value: str) -> str:
    return re.sub(r"\\([\\,$|])", r"\1", value)


# ---------------------------------------------------------------------------------------------------
# A loaded node, and the assertion most tests make
# ---------------------------------------------------------------------------------------------------


@dataclass
class Loaded:
    """A node with the dataset in it: its client, what it stored, and the oracle over that."""

    client: TestClient
    dataset: Dataset

    @property
    def oracle(self) -> Oracle:
        return Oracle(self.dataset)


@contextmanager
def loaded_node(database_url: str) -> Iterator[Loaded]:
    """A node on `database_url` (empty) with the dataset loaded through its API."""
    app = create_app(Settings(database_url=database_url))
    with TestClient(app, base_url=BASE_HOST, client=("127.0.0.1", 50000)) as client:
        env = Loaded(client, load(client))
        yield env
        for res_type in ORDER:  # a shared copy must come out as it went in: no test may have written to it
            found = {e["resource"]["id"]: e["resource"] for e in entries(search(client, res_type, "_count=1000"))}
            assert found == env.dataset.resources[res_type], f"a test changed the shared {res_type}s"


def assert_search(env: Loaded, res_type: str, params: str, discriminating: bool = True) -> set[str]:
    """Every page of `res_type?params` together is exactly what the oracle says, nothing twice; with
    `discriminating`, the query must also select some but not all of the type (or it proves nothing)."""
    expected = env.oracle.ids(res_type, params)
    got = [i for _, i in all_match_ids(env.client, res_type, params)]
    assert len(got) == len(set(got)), f"{res_type}?{params} repeats {sorted(i for i in got if got.count(i) > 1)}"
    assert set(got) == expected, (
        f"{res_type}?{params}: missing {sorted(expected - set(got))}, unexpected {sorted(set(got) - expected)}"
    )
    if discriminating:
        assert expected, f"{res_type}?{params} matches nothing in the dataset: a weak test"
        assert expected != env.dataset.ids(res_type), f"{res_type}?{params} matches everything: a weak test"
    return expected

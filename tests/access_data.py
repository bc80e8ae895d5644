"""A small world for the access-control tests: two integrated-care projects (A and B), a pharmacy, two
providers, three patients, their inclusions and consents, and the CareTeams that make therapeutic
relationships (current, expired). Loaded by the operator; then every role asks through a JWT."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from jwt_keys import TestIssuer, jwt_settings
from live_node import BASE_HOST
from starlette.testclient import TestClient

from fhir_node.app import create_app
from fhir_node.settings import Settings

NS = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem"
SSIN, NIHDI = f"{NS}/ssin", f"{NS}/nihdi"
STATUS = "https://fhir-node.be/fhir/CodeSystem/inclusion-status"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
HRESCH = ("http://terminology.hl7.org/CodeSystem/v3-ActReason", "HRESCH")

PSI_A, PSI_B, PHARMACY = "90600473", "95286761", "60702204"
DR_X, DR_Y = "18780485003", "15171887003"
P1, P2, P3 = "85073003328", "17073003384", "98472899765"
ISSUER = TestIssuer()


@dataclass
class World:
    """Ids of what was loaded, by a short name (`A1`: project A's inclusion of patient 1)."""

    ids: dict[str, str] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)

    def ref(self, name: str) -> str:
        return f"{self.types[name]}/{self.ids[name]}"


def episode(patient: str, org: str, kind: str, start: str = "2024-01-01") -> dict[str, Any]:
    return {
        "resourceType": "EpisodeOfCare",
        "status": "active",
        "type": [{"coding": [{"system": STATUS, "code": kind}]}],
        "patient": {"reference": patient},
        "managingOrganization": {"reference": org},
        "period": {"start": start},
    }


def consent(patient: str, decision: str = "permit") -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": patient},
        "dateTime": "2024-02-01T10:00:00Z",
        "provision": {"type": decision, "purpose": [{"system": HRESCH[0], "code": HRESCH[1]}]},
    }


def _care_team(patient: str, member: str, period: dict[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "CareTeam",
        "status": "active",
        "subject": {"reference": patient},
        "participant": [{"member": {"reference": member}, "period": period}],
    }


def load(client: TestClient) -> World:
    """The world, created by the operator (FHIR_NODE_AUTH=none) through the API."""
    world = World()

    def post(name: str, body: dict[str, Any]) -> str:
        r = client.post(f"/fhir/{body['resourceType']}", json=body)
        assert r.status_code == 201, r.text
        world.ids[name] = r.json()["id"]
        world.types[name] = body["resourceType"]
        return f"{body['resourceType']}/{world.ids[name]}"

    org = {
        k: post(f"org{k}", {"resourceType": "Organization", "identifier": [{"system": NIHDI, "value": v}]})
        for k, v in (("A", PSI_A), ("B", PSI_B), ("Ph", PHARMACY))
    }
    dr = {
        k: post(f"dr{k}", {"resourceType": "Practitioner", "identifier": [{"system": NIHDI, "value": v}]})
        for k, v in (("X", DR_X), ("Y", DR_Y))
    }
    pat = {
        k: post(k, {"resourceType": "Patient", "identifier": [{"system": SSIN, "value": v}]})
        for k, v in (("P1", P1), ("P2", P2), ("P3", P3))
    }
    post("A1", episode(pat["P1"], org["A"], "principal"))
    post("B1", episode(pat["P1"], org["B"], "information"))
    post("B2", episode(pat["P2"], org["B"], "principal"))
    post("A3", episode(pat["P3"], org["A"], "information"))
    post("B3", episode(pat["P3"], org["B"], "principal"))
    post("C1", consent(pat["P1"]))
    post("C2", consent(pat["P2"], "deny"))
    post("C3", consent(pat["P3"]))
    post("T1", _care_team(pat["P1"], dr["X"], {"start": "2020-01-01"}))
    post("T2", _care_team(pat["P2"], dr["X"], {"start": "2020-01-01", "end": "2021-01-01"}))
    post("T3", _care_team(pat["P3"], org["Ph"], {"start": "2020-01-01"}))
    return world


#: Each role's token: (sub, role, claims).
CALLERS: dict[str, tuple[str, str, dict[str, str]]] = {
    "patient": (P1, "patient", {}),
    "provider": ("79121203389", "provider", {"nihdi": DR_X}),
    "stranger": ("79121203389", "provider", {"nihdi": DR_Y}),
    "pharmacist": ("68062302774", "pharmacist", {"nihdi": PHARMACY}),
    "psi-admin": ("90010112395", "psi-admin", {"psi": PSI_A}),
    "psi-coordinator": ("90010112395", "psi-coordinator", {"psi": PSI_A}),
    "aggregator": ("bihr-central-index", "aggregator", {}),
    "insurer": ("insurer-union", "insurer", {}),
    "operator": ("node-operator", "operator", {}),
}


def token(caller: str, scope: str = "system/*.cruds") -> str:
    sub, role, claims = CALLERS[caller]
    return ISSUER.token(sub, role, scope, **claims)


def headers(caller: str, scope: str = "system/*.cruds") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(caller, scope)}"}


def search(client: TestClient, caller: str, query: str) -> dict[str, Any]:
    """A GET on `/fhir/{query}` as `caller` that must succeed: its Bundle."""
    r = client.get(f"/fhir/{query}", headers=headers(caller))
    assert r.status_code == 200, r.text
    return r.json()


@contextlib.contextmanager
def secured(
    database_url: str, loader: Callable[[TestClient], Any] = load, **settings: Any
) -> Iterator[tuple[TestClient, Any]]:
    """The world `loader` makes as the operator, then the same database served with FHIR_NODE_AUTH=jwt."""
    plain = Settings(database_url=database_url, enforce_profiles=False, audit=False)
    with TestClient(create_app(plain), base_url=BASE_HOST, client=("127.0.0.1", 50000)) as operator:
        world = loader(operator)
    with serving_jwt(database_url, **settings) as client:
        yield client, world


@contextlib.contextmanager
def serving_jwt(database_url: str, **settings: Any) -> Iterator[TestClient]:
    """A node on this database with FHIR_NODE_AUTH=jwt trusting ISSUER, audited, for a remote client."""
    config = {"database_url": database_url, "enforce_profiles": False, "audit": True}
    config |= jwt_settings(ISSUER.jwks_json()) | settings
    with TestClient(create_app(Settings(**config)), base_url=BASE_HOST, client=("10.1.2.3", 50000)) as client:
        yield client

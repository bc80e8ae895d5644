"""The declarant (be-ext-recorder) may be a care provider or a pharmacist: a Practitioner, a PractitionerRole
or the pharmacy's Organization, by NIHDI number; nothing else. The `recorder` search follows each."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from bihr_instances import NIHDI, SSIN
from bihr_instances import inclusion as profiled_inclusion
from inclusions import JSON, created

RECORDER = "https://www.ehealth.fgov.be/standards/fhir/core/StructureDefinition/be-ext-recorder"
NS = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem"
PHARMACY = "60702204"


def declared_by(value: dict[str, Any]) -> dict[str, Any]:
    return {**profiled_inclusion(), "extension": [{"url": RECORDER, "valueReference": value}]}


def errors(client, resource: dict[str, Any]) -> list[dict[str, Any]]:
    r = client.post("/fhir/EpisodeOfCare/$validate", content=orjson.dumps(resource), headers=JSON)
    assert r.status_code == 200, r.text
    return [i for i in r.json()["issue"] if i["severity"] in ("error", "fatal")]


@pytest.mark.parametrize(
    "recorder",
    [
        {"reference": "Practitioner/dr", "identifier": {"system": NIHDI, "value": "18780485003"}},
        {"type": "PractitionerRole", "identifier": {"system": f"{NS}/nihdi-professional", "value": "18780485003"}},
        {"reference": "Organization/pharmacy", "identifier": {"system": NIHDI, "value": PHARMACY}},
        {"type": "Organization", "identifier": {"system": f"{NS}/nihdi-organization", "value": PHARMACY}},
    ],
)
def test_declarants_the_profile_accepts(enforcing_client, recorder: dict[str, Any]):
    assert errors(enforcing_client, declared_by(recorder)) == []


@pytest.mark.parametrize(
    ("recorder", "why"),
    [
        ({"reference": "Patient/p1", "identifier": {"system": NIHDI, "value": PHARMACY}}, "Patient"),
        (
            {"reference": "Organization/pharmacy", "identifier": {"system": SSIN, "value": "85073003328"}},
            "bihr-inclusion-1",
        ),
        ({"reference": "Organization/pharmacy", "identifier": {"system": NIHDI, "value": "60702205"}}, "bihr-nihdi"),
    ],
)
def test_declarants_the_profile_refuses(enforcing_client, recorder: dict[str, Any], why: str):
    found = errors(enforcing_client, declared_by(recorder))
    assert any(why in i["diagnostics"] for i in found), found


def test_a_pharmacy_declares_and_is_searchable(enforcing_client):
    org = {"resourceType": "Organization", "identifier": [{"system": NIHDI, "value": PHARMACY}], "name": "Apotheek"}
    pharmacy = created(enforcing_client, org)
    declared = declared_by(
        {"reference": f"Organization/{pharmacy}", "identifier": {"system": NIHDI, "value": PHARMACY}}
    )
    res_id = created(enforcing_client, declared)
    found = enforcing_client.get(f"/fhir/EpisodeOfCare?recorder=Organization/{pharmacy}").json()
    assert [e["resource"]["id"] for e in found["entry"]] == [res_id]
    found = enforcing_client.get(f"/fhir/EpisodeOfCare?recorder:identifier={NIHDI}|{PHARMACY}").json()
    assert [e["resource"]["id"] for e in found["entry"]] == [res_id]

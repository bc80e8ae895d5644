"""Therapeutic relationships from the CareTeams the operator loads (fhir_node.security.relationships), and
CareTeam as a served, searchable type; on both databases."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from bundle_helpers import search_ids
from r4_resources import JSON_HEADERS
from starlette.testclient import TestClient

from fhir_node.security.principal import Principal, Role, Scopes
from fhir_node.security.relationships import (
    NIHDI,
    NIHDI_ORGANIZATION,
    NIHDI_PROFESSIONAL,
    SSIN,
    relationship_source,
)
from fhir_node.settings import Settings

PROVIDER = "10012345001"
OTHER_PROVIDER = "10098765002"
PHARMACY = "20012345001"
SSIN_A = "85073003328"
SSIN_B = "17073003384"
#: The moment relationships are asked about; periods below are placed around it.
AT = datetime(2024, 6, 15, 12, 0)
YEAR = {"start": "2024-01-01", "end": "2024-12-31"}


def _put(client: TestClient, resource: dict[str, Any]) -> None:
    r = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource, headers=JSON_HEADERS)
    assert r.status_code in (200, 201), r.text


def _nihdi(system: str, value: str) -> list[dict[str, str]]:
    return [{"system": system, "value": value}]


def _team(team_id: str, subject: str | dict[str, Any], *participants: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A CareTeam about `subject` (a Patient id, or a Reference)."""
    return {
        "resourceType": "CareTeam",
        "id": team_id,
        "subject": {"reference": f"Patient/{subject}"} if isinstance(subject, str) else subject,
        "participant": list(participants),
        **extra,
    }


def _at(member: str | dict[str, Any], period: dict[str, str] | None = YEAR) -> dict[str, Any]:
    """A participant: `member` a literal reference (Type/id) or a Reference; `period` None leaves it open."""
    p: dict[str, Any] = {"member": {"reference": member} if isinstance(member, str) else member}
    if period is not None:
        p["period"] = period
    return p


def _load(client: TestClient) -> None:
    """One CareTeam per case, each about its own Patient, so the answer names which cases count."""
    patients = {
        "p-current": None,
        "p-expired": None,
        "p-future": None,
        "p-inactive": None,
        "p-deleted": None,
        "p-logical": None,
        "p-ssin": SSIN_A,
        "p-ssin-unrelated": SSIN_B,
        "p-other": None,
        "p-pharmacy": None,
        "p-org-same": None,
        "p-org-logical": None,
        "p-team-over": None,
        "p-day": None,
        "p-open": None,
    }
    for pid, ssin in patients.items():
        _put(client, {"resourceType": "Patient", "id": pid, **({"identifier": _nihdi(SSIN, ssin)} if ssin else {})})
    _put(client, {"resourceType": "Practitioner", "id": "prac-1", "identifier": _nihdi(NIHDI, PROVIDER)})
    _put(
        client,
        {"resourceType": "Practitioner", "id": "prac-2", "identifier": _nihdi(NIHDI_PROFESSIONAL, OTHER_PROVIDER)},
    )
    _put(client, {"resourceType": "Organization", "id": "pharm-1", "identifier": _nihdi(NIHDI_ORGANIZATION, PHARMACY)})
    # An Organization carrying the provider's number: never the provider.
    _put(client, {"resourceType": "Organization", "id": "org-same", "identifier": _nihdi(NIHDI, PROVIDER)})
    logical_provider = {"type": "Practitioner", "identifier": {"system": NIHDI_PROFESSIONAL, "value": PROVIDER}}
    for team in (
        _team("ct-current", "p-current", _at("Practitioner/prac-1"), status="active"),
        _team("ct-expired", "p-expired", _at("Practitioner/prac-1", {"start": "2023-01-01", "end": "2024-06-14"})),
        _team("ct-future", "p-future", _at("Practitioner/prac-1", {"start": "2024-07-01"})),
        _team("ct-inactive", "p-inactive", _at("Practitioner/prac-1"), status="inactive"),
        _team("ct-deleted", "p-deleted", _at("Practitioner/prac-1")),
        _team("ct-logical", "p-logical", _at(logical_provider)),
        _team("ct-ssin", {"identifier": {"system": SSIN, "value": SSIN_A}}, _at("Practitioner/prac-1")),
        _team("ct-other", "p-other", _at("Practitioner/prac-2")),
        _team("ct-pharmacy", "p-pharmacy", _at("Organization/pharm-1")),
        _team("ct-org-same", "p-org-same", _at("Organization/org-same")),
        _team(
            "ct-org-logical",
            "p-org-logical",
            _at({"type": "Organization", "identifier": {"system": NIHDI, "value": PROVIDER}}),
        ),
        _team("ct-team-over", "p-team-over", _at("Practitioner/prac-1"), period={"end": "2024-03-31"}),
        _team("ct-day", "p-day", _at("Practitioner/prac-1", {"start": "2024-06-01", "end": "2024-06-15"})),
        _team("ct-open", "p-open", _at("Practitioner/prac-2", None), status="active"),
    ):
        _put(client, team)
    assert client.delete("/fhir/CareTeam/ct-deleted").status_code in (200, 204)


def _related(client: TestClient, settings: Settings, role: Role, nihdi: str | None, at: datetime = AT) -> set[str]:
    principal = Principal("85073003328", role, Scopes(), nihdi=nihdi)
    with client.app.state.node.db.read() as conn:
        return set(relationship_source(settings).patients(conn, principal, at))


@pytest.fixture
def loaded(client: TestClient) -> TestClient:
    _load(client)
    return client


def test_provider_sees_only_current_relationships_naming_it(loaded, settings):
    """Literal and logical members and subjects count; expired, future, inactive, deleted, out-of-team-period,
    another provider's and an organization's CareTeams do not."""
    assert _related(loaded, settings, "provider", PROVIDER) == {"p-current", "p-logical", "p-ssin", "p-day"}


def test_another_provider_has_its_own_relationships(loaded, settings):
    """An open participant period and an identifier under nihdi-professional on the stored Practitioner."""
    assert _related(loaded, settings, "provider", OTHER_PROVIDER) == {"p-other", "p-open"}


def test_pharmacist_relates_through_its_pharmacy_organization(loaded, settings):
    assert _related(loaded, settings, "pharmacist", PHARMACY) == {"p-pharmacy"}
    assert _related(loaded, settings, "provider", PHARMACY) == set()


def test_an_organization_with_a_providers_number_counts_for_a_pharmacist_only(loaded, settings):
    assert _related(loaded, settings, "pharmacist", PROVIDER) == {"p-org-same", "p-org-logical"}


@pytest.mark.parametrize(
    ("at", "related"),
    [(datetime(2024, 6, 15, 23, 59, 59), True), (datetime(2024, 6, 16), False), (datetime(2024, 5, 31, 23), False)],
)
def test_a_date_only_end_covers_its_whole_day(loaded, settings, at, related):
    assert ("p-day" in _related(loaded, settings, "provider", PROVIDER, at)) is related


def test_the_ends_of_a_relationship_follow_the_periods(loaded, settings):
    """Before the expired one ended, it counted; once the future one starts, it counts."""
    assert "p-expired" in _related(loaded, settings, "provider", PROVIDER, datetime(2024, 3, 1))
    assert "p-future" in _related(loaded, settings, "provider", PROVIDER, datetime(2024, 7, 1))
    assert "p-team-over" in _related(loaded, settings, "provider", PROVIDER, datetime(2024, 3, 1))


@pytest.mark.parametrize(("role", "nihdi"), [("patient", PROVIDER), ("psi-admin", PROVIDER), ("provider", None)])
def test_other_roles_and_a_provider_without_nihdi_have_none(loaded, settings, role, nihdi):
    assert _related(loaded, settings, role, nihdi) == set()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"patient": "Patient/p-current"}, ["ct-current"]),
        ({"subject": "Patient/p-other"}, ["ct-other"]),
        ({"subject:identifier": f"{SSIN}|{SSIN_A}"}, ["ct-ssin"]),
        ({"participant": "Organization/pharm-1"}, ["ct-pharmacy"]),
        ({"participant:identifier": f"{NIHDI_PROFESSIONAL}|{PROVIDER}"}, ["ct-logical"]),
        ({"participant": "Practitioner/prac-2"}, ["ct-open", "ct-other"]),
        ({"date": "le2024-04-01", "participant": "Practitioner/prac-1"}, ["ct-team-over"]),
        ({"status": "inactive"}, ["ct-inactive"]),
        ({"status": "active"}, ["ct-current", "ct-open"]),
    ],
)
def test_care_teams_are_searchable(loaded, query, expected):
    assert search_ids(loaded, "CareTeam", **query) == expected


def test_capability_statement_lists_care_team_and_its_parameters(client):
    rest = client.get("/fhir/metadata").json()["rest"][0]
    care_team = next(r for r in rest["resource"] if r["type"] == "CareTeam")
    assert {"read", "vread", "update", "patch", "delete", "create", "search-type"} <= {
        i["code"] for i in care_team["interaction"]
    }
    params = {p["name"]: p["type"] for p in care_team["searchParam"]}
    assert {"patient", "subject", "participant", "date", "status"} <= set(params)
    assert params["participant"] == "reference"
    assert params["date"] == "date"
    assert params["status"] == "token"

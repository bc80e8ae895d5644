"""Billing dates (annex items 7-8): from the 1st of the month after the start, to the end of the month after
the exclusion; computed by the node into the billing-period extension of principal inclusions and
searchable as `billing-period`, so an insurer lists the inclusions billable in a month."""

from __future__ import annotations

from datetime import date

import orjson
import pytest
from access_data import headers, secured
from bihr_instances import inclusion as profiled_inclusion
from inclusions import BILLING, JSON, SSINS, billing, created, inclusion, patient, post

from fhir_node.rules.billing import first_billed_day, last_billed_day


@pytest.mark.parametrize(
    ("start", "first"),
    [
        ("2024-01-31", date(2024, 2, 1)),  # the 31st
        ("2024-03-01", date(2024, 4, 1)),  # a start on the 1st still counts from the next month
        ("2024-01-30", date(2024, 2, 1)),
        ("2024-02-29", date(2024, 3, 1)),  # leap day
        ("2023-02-28", date(2023, 3, 1)),
        ("2024-12-15", date(2025, 1, 1)),  # December
        ("2024-12-31T23:30:00+01:00", date(2025, 1, 1)),  # the project's calendar day, not UTC's
        ("2024-05", date(2024, 6, 1)),
        ("2024", date(2024, 2, 1)),
    ],
)
def test_first_billed_day(start: str, first: date):
    assert first_billed_day(start) == first


@pytest.mark.parametrize(
    ("end", "last"),
    [
        ("2024-01-31", date(2024, 2, 29)),  # leap year February
        ("2023-01-31", date(2023, 2, 28)),
        ("2100-01-15", date(2100, 2, 28)),  # a century that is no leap year
        ("2000-01-15", date(2000, 2, 29)),  # one that is
        ("2024-02-29", date(2024, 3, 31)),
        ("2024-03-31", date(2024, 4, 30)),
        ("2024-11-30", date(2024, 12, 31)),
        ("2024-12-31", date(2025, 1, 31)),  # December
        ("2024-12-01T00:10:00+01:00", date(2025, 1, 31)),
        ("2024", date(2025, 1, 31)),
    ],
)
def test_last_billed_day(end: str, last: date):
    assert last_billed_day(end) == last


def test_the_node_stamps_principal_inclusions_only(client):
    pid = created(client, patient())
    sent = inclusion("2024-01-31", patient_id=pid)
    sent["extension"] = [
        {"url": BILLING, "valuePeriod": {"start": "1999-01-01"}},
        {"url": "urn:other", "valueString": "x"},
    ]
    stored = post(client, sent).json()
    assert billing(stored) == {"start": "2024-02-01"}
    assert {"url": "urn:other", "valueString": "x"} in stored["extension"]
    ended = {**stored, "period": {"start": "2024-01-31", "end": "2024-12-31"}}
    r = client.put(f"/fhir/EpisodeOfCare/{stored['id']}", content=orjson.dumps(ended), headers=JSON)
    assert billing(r.json()) == {"start": "2024-02-01", "end": "2025-01-31"}
    info = post(client, inclusion("2024-01-31", patient_id=pid, kind="information")).json()
    assert billing(info) is None
    voided = {**r.json(), "status": "entered-in-error"}
    r = client.put(f"/fhir/EpisodeOfCare/{stored['id']}", content=orjson.dumps(voided), headers=JSON)
    assert billing(r.json()) is None
    assert "extension" in r.json()  # the other extension stays


def test_billable_in_a_month(client):
    """Inclusions billable in March 2024: those whose billing period meets any day of it."""
    expected = {}
    for n, (start, end, billable) in enumerate(
        [
            ("2024-02-29", None, True),  # billed from 1 March
            ("2024-03-01", None, False),  # from 1 April
            ("2023-05-10", "2024-01-31", False),  # to 29 February
            ("2023-05-10", "2024-02-01", True),  # to 31 March
            ("2023-05-10", "2024-03-31", True),  # to 30 April
            ("2024-01-15", "2024-01-20", False),  # February only
            ("2024-02-10", "2024-02-11", True),  # March only
        ]
    ):
        pid = created(client, patient(f"id-{n}"))
        expected[created(client, inclusion(start, end, patient_id=pid))] = billable
    created(client, inclusion("2020-01-01", patient_id=created(client, patient("info")), kind="information"))
    r = client.get("/fhir/EpisodeOfCare?billing-period=ge2024-03-01&billing-period=le2024-03-31&_count=100")
    assert r.status_code == 200, r.text
    found = {e["resource"]["id"] for e in r.json().get("entry", [])}
    assert found == {i for i, billable in expected.items() if billable}
    r = client.get("/fhir/EpisodeOfCare?billing-period=sa2024-03-31&_count=100")
    assert {e["resource"]["id"] for e in r.json().get("entry", [])} == {list(expected)[1]}


def test_stamped_inclusions_conform_to_the_profile(enforcing_client):
    """A bihr-inclusion the node stamped validates against the published profile (and its extension's)."""
    sent = profiled_inclusion(SSINS[0])
    r = post(enforcing_client, sent)
    assert r.status_code == 201, r.text
    assert billing(r.json()) == {"start": "2024-06-01"}
    r = enforcing_client.post("/fhir/EpisodeOfCare/$validate", content=r.content, headers=JSON)
    assert r.status_code == 200
    assert [i for i in r.json()["issue"] if i["severity"] in ("error", "fatal")] == []
    bad = {**profiled_inclusion(SSINS[0]), "extension": [{"url": BILLING, "valuePeriod": {"start": "2024-06-15"}}]}
    r = enforcing_client.post("/fhir/EpisodeOfCare/$validate", content=orjson.dumps(bad), headers=JSON)
    assert any("bihr-billing-1" in i.get("diagnostics", "") for i in r.json()["issue"]), r.text


def test_an_insurer_lists_what_it_bills_and_nothing_else(database_url):
    """The insurer role reads every inclusion (to bill the principal ones) and its patient, nothing more."""
    with secured(database_url) as (client, world):
        query = "/fhir/EpisodeOfCare?billing-period=ge2024-03-01&billing-period=le2024-03-31"
        r = client.get(query, headers=headers("insurer", "system/*.rs"))
        assert r.status_code == 200, r.text
        assert {e["resource"]["id"] for e in r.json()["entry"]} == {world.ids[n] for n in ("A1", "B2", "B3")}
        assert all(billing(e["resource"]) == {"start": "2024-02-01"} for e in r.json()["entry"])
        assert client.get(f"/fhir/{world.ref('P1')}", headers=headers("insurer")).status_code == 200
        assert client.get("/fhir/Consent", headers=headers("insurer")).status_code == 403
        r = client.post(
            "/fhir/EpisodeOfCare",
            content=orjson.dumps(inclusion("2024-01-01", patient_id=world.ids["P2"])),
            headers={**JSON, **headers("insurer")},
        )
        assert r.status_code == 403

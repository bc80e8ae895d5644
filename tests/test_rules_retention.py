"""`fhir-node retention [--dry-run | --apply]`: exactly the inclusions excluded more than 10 years ago (every
version and index row) and their patients that nothing else refers to; one chained AuditEvent per
removal, holding ids only; a dry run changes nothing. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date, datetime

import orjson
from chained import chained_events
from inclusions import JSON, SSIN, SSINS, created, inclusion, patient
from sqlalchemy import func, select

from fhir_node.audit import chain
from fhir_node.cli import main
from fhir_node.rules.retention import cutoff, run
from fhir_node.store.database import Database
from fhir_node.store.schema import INDEX_TABLES, resource_versions, resources


def rows(db: Database, res_type: str, res_id: str) -> int:
    """Every row the store holds for a resource: current, versions, index rows."""
    with db.read() as conn:
        return sum(
            conn.execute(
                select(func.count()).where(table.c.res_type == res_type, table.c.res_id == res_id)
            ).scalar_one()
            for table in (resources, resource_versions, *set(INDEX_TABLES.values()))
        )


def years_ago(years: int) -> str:
    return cutoff(date.today(), years).date().isoformat()


def scenario(client) -> tuple[dict[str, str], dict[str, str]]:
    """(inclusions, patients) by name; `gone-*` are due for removal."""
    p = {name: created(client, patient(f"p-{name}")) for name in ("old", "mixed", "consent", "recent", "open", "del")}
    p["ssin"] = created(client, patient(SSINS[0]))
    i = {
        "gone-old-1": created(client, inclusion("2005-01-01", "2010-06-30", patient_id=p["old"])),
        "gone-old-2": created(client, inclusion("2011-01-01", "2012-06-30", patient_id=p["old"], kind="information")),
        "gone-mixed": created(client, inclusion("2005-01-01", "2012-06-30", patient_id=p["mixed"])),
        "kept-mixed": created(client, inclusion("2013-01-01", years_ago(5), patient_id=p["mixed"])),
        "gone-consent": created(client, inclusion("2005-01-01", "2012-06-30", patient_id=p["consent"])),
        "kept-recent": created(client, inclusion("2005-01-01", years_ago(9), patient_id=p["recent"])),
        "kept-open": created(client, inclusion("2005-01-01", patient_id=p["open"])),
        "gone-deleted": created(client, inclusion("2005-01-01", "2011-12-31", patient_id=p["del"])),
        "gone-by-ssin": created(client, inclusion("2001-01-01", "2009-12-31", ssin=SSINS[0])),
    }
    consent = {"resourceType": "Consent", "status": "active", "scope": {"text": "research"}}
    consent |= {"category": [{"text": "research"}], "patient": {"reference": f"Patient/{p['consent']}"}}
    created(client, consent)
    changed = {**inclusion("2005-01-01", "2011-12-31", patient_id=p["old"]), "id": i["gone-old-1"]}
    assert (
        client.put(f"/fhir/EpisodeOfCare/{i['gone-old-1']}", content=orjson.dumps(changed), headers=JSON).status_code
        == 200
    )
    assert client.delete(f"/fhir/EpisodeOfCare/{i['gone-deleted']}").status_code == 204
    return i, p


def test_dry_run_then_apply(client, settings, capsys):
    inclusions, patients = scenario(client)
    db = Database(settings.database_url)
    gone_inclusions = {v for k, v in inclusions.items() if k.startswith("gone")}
    gone_patients = {patients[k] for k in ("old", "del", "ssin")}
    before = {
        (t, i): rows(db, t, i)
        for t, ids in (("EpisodeOfCare", inclusions), ("Patient", patients))
        for i in ids.values()
    }
    assert main(["retention", "--database-url", settings.database_url]) == 0
    listed = set(capsys.readouterr().out.split())
    assert listed == {f"EpisodeOfCare/{i}" for i in gone_inclusions} | {f"Patient/{p}" for p in gone_patients}
    assert {key: rows(db, *key) for key in before} == before  # a dry run changes nothing
    assert main(["retention", "--apply", "--database-url", settings.database_url]) == 0
    assert set(capsys.readouterr().out.split()) == listed
    for (res_type, res_id), count in before.items():
        removed = res_id in gone_inclusions | gone_patients
        assert rows(db, res_type, res_id) == (0 if removed else count), (res_type, res_id)
    with db.read() as conn:
        events = chained_events(conn)
        checked, _, broken = chain.verify(conn)
    assert broken is None and checked == len(listed)
    removed = {e["entity"][1]["what"]["reference"] for e in events}
    assert removed == listed
    for event in events:
        assert event["action"] == "D" and event["subtype"][0]["code"] == "delete"
        text = orjson.dumps(event).decode()  # ids only: no SSIN, no period
        assert SSINS[0] not in text and "p-old" not in text and "period" not in text
    assert main(["retention", "--apply", "--database-url", settings.database_url]) == 0
    assert capsys.readouterr().out == ""  # nothing left to do
    assert client.get(f"/fhir/Patient?identifier={SSIN}|{SSINS[0]}&_total=accurate").json()["total"] == 0
    db.dispose()


def test_the_cutoff_day_is_kept(client, settings):
    pid = created(client, patient())
    on_the_day = created(client, inclusion("2010-01-01", "2016-11-29", patient_id=pid))
    day_before = created(client, inclusion("2010-01-01", "2016-11-28", patient_id=created(client, patient("x"))))
    db = Database(settings.database_url)
    done = run(db, cutoff(date(2026, 11, 29), 10), apply=True)
    assert done.inclusions == [day_before]
    assert rows(db, "EpisodeOfCare", on_the_day) > 0
    db.dispose()


def test_cutoff():
    assert cutoff(date(2026, 11, 29), 10) == datetime(2016, 11, 29)
    assert cutoff(date(2028, 2, 29), 10) == datetime(2018, 2, 28)
    assert cutoff(date(2028, 2, 29), 4) == datetime(2024, 2, 29)

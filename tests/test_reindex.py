"""`fhir-node reindex` rebuilds the search index from stored resources, on both databases."""

from sqlalchemy import delete

from fhir_node.cli import main
from fhir_node.conformance.published import published
from fhir_node.store.database import Database
from fhir_node.store.schema import INDEX_TABLES

EPISODE = {
    "resourceType": "EpisodeOfCare",
    "status": "active",
    "patient": {"reference": "Patient/p1"},
    "period": {"start": "2024-03-01"},
}


def _ids(client, query):
    bundle = client.get(f"/fhir/EpisodeOfCare?{query}").json()
    return {e["resource"]["id"] for e in bundle.get("entry", [])}


def test_reindex_restores_lost_index_rows(client, database_url, capsys):
    created = {
        client.post("/fhir/EpisodeOfCare", json=EPISODE, headers={"Content-Type": "application/fhir+json"}).json()["id"]
        for _ in range(3)
    }
    assert _ids(client, "status=active&date=ge2024-03-01") == created

    db = Database(database_url)
    with db.write() as conn:
        for table in set(INDEX_TABLES.values()):
            conn.execute(delete(table))
    db.dispose()
    assert _ids(client, "status=active") == set()

    assert main(["reindex", "--database-url", database_url]) == 0
    assert f"reindexed {3 + len(published())} resources" in capsys.readouterr().out  # and the published guide
    assert _ids(client, "status=active&date=ge2024-03-01") == created
    assert _ids(client, "patient=Patient/p1") == created

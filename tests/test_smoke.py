"""The node answers its CapabilityStatement on both databases, in-process and as a real server."""

import httpx


def test_metadata_in_process(client):
    r = client.get("/fhir/metadata")
    assert r.status_code == 200
    assert r.json()["fhirVersion"] == "4.0.1"


def test_metadata_live(live_server):
    r = httpx.get(f"{live_server}/metadata")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/fhir+json")

"""Real FHIR client libraries against a real `fhir-node serve` (uvicorn) process, and the server's refusal
to expose an unauthenticated node beyond loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import requests
from fhirclient import client as fhirclient_client
from fhirclient.models.auditevent import AuditEvent
from fhirclient.models.bundle import Bundle
from fhirclient.models.capabilitystatement import CapabilityStatement
from fhirclient.models.consent import Consent
from fhirclient.models.episodeofcare import EpisodeOfCare
from fhirclient.server import FHIRNotFoundException
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound
from live_node import free_port

FHIR_JSON = "application/fhir+json"
SERVED_TYPES = {"EpisodeOfCare", "Consent", "AuditEvent", "Patient", "Organization", "Practitioner", "CareTeam"}
GUIDE_TYPES = {
    "StructureDefinition",
    "ValueSet",
    "CodeSystem",
    "SearchParameter",
    "NamingSystem",
    "ImplementationGuide",
}


def fhirclient_server(base: str):
    smart = fhirclient_client.FHIRClient(settings={"app_id": "test", "api_base": base})
    return smart, smart.server


# --- fhirclient (SMART on FHIR's Python client) ------------------------------------------------------


def test_fhirclient_reads_the_capability_statement(live_server):
    smart, server = fhirclient_server(live_server)
    assert smart.prepare() is True  # fetches and parses the CapabilityStatement, finds no auth to do
    capability = server.capabilityStatement
    assert isinstance(capability, CapabilityStatement)
    assert capability.fhirVersion == "4.0.1"
    assert capability.kind == "instance"
    assert {r.type for r in capability.rest[0].resource} == SERVED_TYPES | GUIDE_TYPES


def test_fhirclient_create_read_update_history_delete(live_server):
    _, server = fhirclient_server(live_server)

    created = EpisodeOfCare({"status": "planned", "patient": {"reference": "Patient/p1"}}).create(server)
    rid = created["id"]
    assert created["meta"]["versionId"] == "1"

    episode = EpisodeOfCare.read(rid, server)
    assert episode.id == rid
    assert episode.status == "planned"
    assert episode.patient.reference == "Patient/p1"

    episode.status = "active"
    updated = episode.update(server)
    assert updated["meta"]["versionId"] == "2"
    assert EpisodeOfCare.read(rid, server).status == "active"

    # fhirclient cannot send If-Match: the version-aware update goes through httpx.
    body = EpisodeOfCare.read(rid, server).as_json()
    body["status"] = "finished"
    ok = httpx.put(
        f"{live_server}/EpisodeOfCare/{rid}", json=body, headers={"Content-Type": FHIR_JSON, "If-Match": 'W/"2"'}
    )
    assert ok.status_code == 200, ok.text
    assert ok.headers["etag"] == 'W/"3"'
    stale = httpx.put(
        f"{live_server}/EpisodeOfCare/{rid}", json=body, headers={"Content-Type": FHIR_JSON, "If-Match": 'W/"2"'}
    )
    assert stale.status_code == 412
    assert EpisodeOfCare.read(rid, server).meta.versionId == "3"

    history = Bundle.read_from(f"EpisodeOfCare/{rid}/_history", server)
    assert history.type == "history"
    assert [e.request.method for e in history.entry] == ["PUT", "PUT", "POST"]
    assert [e.resource.status for e in history.entry] == ["finished", "active", "planned"]

    episode.delete(server)
    with pytest.raises(requests.HTTPError) as gone:
        EpisodeOfCare.read(rid, server)
    assert gone.value.response.status_code == 410
    with pytest.raises(FHIRNotFoundException):
        EpisodeOfCare.read("never-was", server)


def test_fhirclient_models_of_consent_and_audit_event_are_accepted(live_server):
    _, server = fhirclient_server(live_server)
    consent = Consent(
        {
            "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": "Patient/p1"},
            "dateTime": "2024-03-01T09:30:00+01:00",
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
            "provision": {"type": "permit", "period": {"start": "2024-03-01"}},
        }
    )
    cid = consent.create(server)["id"]
    read_back = Consent.read(cid, server)
    assert read_back.provision.type == "permit"
    assert read_back.dateTime.as_json() == "2024-03-01T09:30:00+01:00"

    event = AuditEvent(
        {
            "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
            "recorded": "2024-01-01T10:00:00Z",
            "agent": [{"requestor": True, "who": {"display": "node operator"}}],
            "source": {"observer": {"display": "fhir-node"}},
        }
    )
    aid = event.create(server)["id"]
    stored = AuditEvent.read(aid, server)
    assert stored.agent[0].requestor is True
    with pytest.raises(requests.HTTPError) as refused:
        stored.update(server)
    assert refused.value.response.status_code == 405
    with pytest.raises(requests.HTTPError) as refused:
        stored.delete(server)
    assert refused.value.response.status_code == 405
    assert AuditEvent.read(aid, server).meta.versionId == "1"


# --- fhirpy (beda.software's client) -----------------------------------------------------------------


def test_fhirpy_create_read_update_history_delete(live_server):
    client = SyncFHIRClient(live_server)
    assert client.execute("metadata", method="get")["fhirVersion"] == "4.0.1"

    episode = client.resource("EpisodeOfCare", status="planned", patient={"reference": "Patient/p1"})
    episode.save()
    rid = episode.id
    assert rid
    assert episode["meta"]["versionId"] == "1"

    fetched = client.reference("EpisodeOfCare", rid).to_resource()
    assert fetched["status"] == "planned"

    fetched["status"] = "active"
    fetched.save()
    assert fetched["meta"]["versionId"] == "2"

    body = client.reference("EpisodeOfCare", rid).to_resource().serialize()
    body["status"] = "finished"
    stale = httpx.put(
        f"{live_server}/EpisodeOfCare/{rid}", json=body, headers={"Content-Type": FHIR_JSON, "If-Match": 'W/"1"'}
    )
    assert stale.status_code == 412
    ok = httpx.put(
        f"{live_server}/EpisodeOfCare/{rid}", json=body, headers={"Content-Type": FHIR_JSON, "If-Match": 'W/"2"'}
    )
    assert ok.status_code == 200, ok.text

    found = client.resources("EpisodeOfCare").search(_id=rid).first()
    assert found is not None
    assert found["status"] == "finished"

    history = client.execute(f"EpisodeOfCare/{rid}/_history", method="get")
    assert history["type"] == "history"
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"3"', 'W/"2"', 'W/"1"']

    fetched.delete()
    with pytest.raises(ResourceNotFound):
        client.reference("EpisodeOfCare", rid).to_resource()
    assert client.execute(f"EpisodeOfCare/{rid}/_history", method="get")["entry"][0]["request"]["method"] == "DELETE"


def test_fhirpy_update_with_a_client_id_creates(live_server):
    client = SyncFHIRClient(live_server)
    patient = client.resource("Patient", id="pseudonym-42", active=True)
    patient.save()
    assert patient["meta"]["versionId"] == "1"
    assert client.reference("Patient", "pseudonym-42").to_resource()["active"] is True


# --- refusing to expose an unauthenticated node ------------------------------------------------------


def fhir_node_command() -> list[str]:
    script = Path(sys.executable).with_name("fhir-node")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fhir_node"]


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_serve_refuses_a_non_loopback_host_with_auth_none(tmp_path, host):
    env = {
        **os.environ,
        "FHIR_NODE_AUTH": "none",
        "FHIR_NODE_DATABASE_URL": f"sqlite:///{tmp_path / 'refused.db'}",
    }
    command = [*fhir_node_command(), "serve", "--host", host, "--port", str(free_port())]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"fhir-node serve --host {host} with FHIR_NODE_AUTH=none started instead of refusing")
    assert proc.returncode != 0
    assert "loopback" in stderr.lower()
    assert host in stderr

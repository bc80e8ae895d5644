"""Building transaction and batch Bundles and reading their answers: shared by the Bundle tests."""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx
import orjson

FHIR_JSON = "application/fhir+json"
HEADERS = {"Content-Type": FHIR_JSON}
SSIN = "urn:test:ssin"
LOCATION = re.compile(r"(?:.*/)?([A-Za-z]+)/([A-Za-z0-9\-.]{1,64})/_history/(\d+)")


def patient(value: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": SSIN, "value": value}], **extra}


def organization(name: str = "PSI Brussels", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Organization", "name": name, **extra}


def episode(patient_ref: str, status: str = "active", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "EpisodeOfCare", "status": status, "patient": {"reference": patient_ref}, **extra}


def entry(method: str, url: str, resource: dict[str, Any] | None = None, full_url: str | None = None, **request: str):
    out: dict[str, Any] = {}
    if full_url is not None:
        out["fullUrl"] = full_url
    if resource is not None:
        out["resource"] = resource
    out["request"] = {"method": method, "url": url, **request}
    return out


def post(resource: dict[str, Any], full_url: str | None = None, **request: str) -> dict[str, Any]:
    return entry("POST", resource["resourceType"], resource, full_url, **request)


def put(res_type: str, res_id: str, resource: dict[str, Any], full_url: str | None = None, **request: str):
    return entry("PUT", f"{res_type}/{res_id}", {**resource, "id": res_id}, full_url, **request)


def json_patch(res_type: str, res_id: str, operations: list[dict[str, Any]], **request: str) -> dict[str, Any]:
    """A PATCH entry: the JSON Patch travels as a Binary with base64 data (R4 3.1.0.11.6)."""
    binary = {
        "resourceType": "Binary",
        "contentType": "application/json-patch+json",
        "data": base64.b64encode(orjson.dumps(operations)).decode(),
    }
    return entry("PATCH", f"{res_type}/{res_id}", binary, **request)


def send(client, body: Any, **headers: str) -> httpx.Response:
    return client.post("/fhir", content=orjson.dumps(body), headers={**HEADERS, **headers})


def status(response_entry: dict[str, Any]) -> int:
    return int(response_entry["response"]["status"].split()[0])


def located(response_entry: dict[str, Any]) -> tuple[str, str, str]:
    """(type, id, version) from a response entry's location."""
    m = LOCATION.fullmatch(response_entry["response"]["location"])
    assert m, response_entry
    return m.group(1), m.group(2), m.group(3)


def seed(client, resource: dict[str, Any]) -> str:
    r = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=HEADERS)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def read(client, reference: str) -> dict[str, Any]:
    r = client.get(f"/fhir/{reference}")
    assert r.status_code == 200, r.text
    return r.json()


def history_total(client) -> int:
    r = client.get("/fhir/_history", params={"_count": "1000"})
    assert r.status_code == 200, r.text
    return len(r.json().get("entry", []))


def search_ids(client, res_type: str, **params: str) -> list[str]:
    r = client.get(f"/fhir/{res_type}", params={"_count": "1000", **params})
    assert r.status_code == 200, r.text
    return sorted(e["resource"]["id"] for e in r.json().get("entry", []))


def outcome(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"] and all(i["severity"] in ("error", "fatal") for i in body["issue"]), body
    return body

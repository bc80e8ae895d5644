"""Input the node refuses whole, with a 400 and an OperationOutcome, instead of half-accepting it or
failing with a 500: JSON nested without bound, repeated JSON keys, version numbers no database holds,
query strings and form bodies that are not UTF-8; and a client that leaves mid-body is one quiet 499 line."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from asgi_scope import http_scope
from starlette.testclient import TestClient
from test_rest_errors import assert_outcome, history_count

from fhir_node.app import create_app
from fhir_node.settings import Settings

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def nested_extension(depth: int) -> bytes:
    """A Patient whose extension holds an extension ... `depth` deep (valid R4 at every level), written
    out by hand: JSON libraries refuse to write it."""
    leaf = b'{"url":"http://example.org/leaf","valueString":"x"}'
    nested = b'{"url":"http://example.org/n","extension":[' * depth + leaf + b"]}" * depth
    return b'{"resourceType":"Patient","extension":[' + nested + b"]}"


@pytest.mark.parametrize("depth", [200, 450])
def test_json_nested_past_the_bound_is_a_400_on_create_validate_and_transaction(client: TestClient, depth: int) -> None:
    before = history_count(client)
    body = nested_extension(depth)
    r = client.post("/fhir/Patient", content=body, headers=FHIR_JSON)
    assert "nests deeper than 64" in assert_outcome(r, 400, "structure")["issue"][0]["diagnostics"]
    r = client.post("/fhir/Patient/$validate", content=body, headers=FHIR_JSON)
    assert_outcome(r, 400, "structure")
    entry = b'{"resource":%s,"request":{"method":"POST","url":"Patient"}}' % body
    bundle = b'{"resourceType":"Bundle","type":"transaction","entry":[%s]}' % entry
    assert_outcome(client.post("/fhir", content=bundle, headers=FHIR_JSON), 400, "structure")
    assert history_count(client) == before


def test_json_nested_within_the_bound_is_stored(client: TestClient) -> None:
    r = client.post("/fhir/Patient", content=nested_extension(20), headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    stored = client.get(f"/fhir/Patient/{r.json()['id']}").json()
    assert stored["extension"] == orjson.loads(nested_extension(20))["extension"]


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"resourceType":"Patient","active":true,"active":false}', "active"),
        (b'{"resourceType":"Patient","name":[{"family":"A","given":["x"],"family":"B"}]}', "family"),
        (b'{"resourceType":"Patient","resourceType":"Patient"}', "resourceType"),
    ],
)
def test_a_repeated_json_key_is_a_400_and_nothing_is_stored(client: TestClient, body: bytes, key: str) -> None:
    before = history_count(client)
    r = client.post("/fhir/Patient", content=body, headers=FHIR_JSON)
    assert f"'{key}' appears twice" in assert_outcome(r, 400, "structure")["issue"][0]["diagnostics"]
    assert history_count(client) == before


def test_keys_that_look_repeated_inside_strings_are_fine(client: TestClient) -> None:
    body = b'{"resourceType":"Patient","active":true,"name":[{"text":"\\"active\\": \\\\\\"active\\":"}]}'
    r = client.post("/fhir/Patient", content=body, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    assert r.json()["name"][0]["text"] == '"active": \\"active":'


def test_a_version_or_cursor_no_database_holds_is_a_404_or_400(client: TestClient) -> None:
    pid = client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON).json()["id"]
    for vid in ("99999999999999999999999", "9223372036854775808", "0", "²"):
        assert_outcome(client.get(f"/fhir/Patient/{pid}/_history/{vid}"), 404, "not-found")
    assert_outcome(client.get("/fhir/Patient/_history?_cursor=99999999999999999999999"), 400, "value", "_cursor")
    assert client.get(f"/fhir/Patient/{pid}/_history/1").status_code == 200


def test_search_values_must_be_utf8(client: TestClient) -> None:
    client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "Ÿ"}]}, headers=FHIR_JSON)
    assert_outcome(client.get("/fhir/Patient?name=%ff"), 400, "invalid")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for body in (b"name=\xff", b"name=%ff"):
        assert_outcome(client.post("/fhir/Patient/_search", content=body, headers=form), 400)
    assert client.get("/fhir/Patient?name=%C5%B8").json()["total"] == 1
    assert client.post("/fhir/Patient/_search", content="name=Ÿ".encode(), headers=form).json()["total"] == 1


def test_a_client_leaving_mid_body_is_one_quiet_499_line(
    settings: Settings, caplog: pytest.LogCaptureFixture, access_log: Callable[[], list[dict[str, Any]]]
) -> None:
    """The real ASGI app, called the way uvicorn does when the connection drops after part of the body."""
    app = create_app(settings)
    sent: list[dict[str, Any]] = []
    messages = [
        {"type": "http.request", "body": b'{"resourceType":"Pat', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = http_scope("POST", "/fhir/Patient", headers=((b"content-type", b"application/fhir+json"),))
    with caplog.at_level(logging.INFO, logger="fhir_node"):
        asyncio.run(app(scope, receive, send))
    assert sent == []
    assert not [r for r in caplog.records if r.name.startswith("fhir_node")]  # no error, no traceback
    assert [(line["level"], line["message"], line["status"]) for line in access_log()] == [("INFO", "request", 499)]

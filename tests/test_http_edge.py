"""The HTTP edge: the node answers only to the host names it is known by (no DNS rebinding from a page in
a browser on the same host, no forged Host in Location or links), every answer carries the headers that
keep health data out of caches and browsers' guesses, and a real server bounds a request's head (size
and time) and body (time) and names no server software."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from live_node import serve_node
from starlette.testclient import TestClient
from test_rest_errors import assert_outcome

from fhir_node.app import create_app
from fhir_node.settings import Settings

PATIENT = {"resourceType": "Patient", "active": True}
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def client_for(settings: Settings, base_url: str) -> TestClient:
    return TestClient(create_app(settings), base_url=base_url, client=("127.0.0.1", 50000))


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080", "http://127.0.0.2", "http://LOCALHOST."],
)
def test_loopback_host_names_are_answered(settings: Settings, base_url: str) -> None:
    with client_for(settings, base_url) as client:
        r = client.post("/fhir/Patient", json=PATIENT, headers=FHIR_JSON)
        assert r.status_code == 201, r.text
        assert r.headers["location"].lower().startswith(f"{base_url.lower()}/fhir/patient/")


@pytest.mark.parametrize("host", ["rebound.attacker.example", "127.0.0.1.attacker.example", "evil:8080"])
def test_other_host_names_are_refused_before_anything_runs(settings: Settings, host: str) -> None:
    with client_for(settings, f"http://{host}") as client:
        r = client.post("/fhir/Patient", json=PATIENT, headers=FHIR_JSON)
        assert "does not answer to the host" in assert_outcome(r, 400, "invalid")["issue"][0]["diagnostics"]
        assert_outcome(client.get("/fhir/Patient"), 400, "invalid")
        assert client.get("/health").status_code == 400
    with client_for(settings, "http://127.0.0.1:8080") as local:
        assert local.get("/fhir/Patient").json().get("total", 0) == 0


def test_base_url_host_and_allowed_hosts_are_answered(database_url: str) -> None:
    settings = Settings(
        database_url=database_url,
        base_url="https://node.example.be/fhir",
        allowed_hosts="internal.example.be, Other.Example.BE",
    )
    for base in ("https://node.example.be", "http://internal.example.be:8080", "http://other.example.be"):
        with client_for(settings, base) as client:
            r = client.post("/fhir/Patient", json=PATIENT, headers=FHIR_JSON)
            assert r.status_code == 201, r.text
            assert r.headers["location"].startswith("https://node.example.be/fhir/Patient/")
    with client_for(settings, "http://elsewhere.example.be") as client:
        assert_outcome(client.get("/fhir/Patient"), 400, "invalid")


def test_every_answer_carries_the_security_headers(client: TestClient) -> None:
    pid = client.post("/fhir/Patient", json=PATIENT, headers=FHIR_JSON).json()["id"]
    answers = [
        client.get(f"/fhir/Patient/{pid}"),
        client.get("/fhir/Patient?active=true"),
        client.get("/fhir/Patient/unknown"),
        client.get("/fhir/metadata"),
        client.get("/health"),
        client.get("/nowhere"),
    ]
    for r in answers:
        assert r.headers["cache-control"] == "no-store", r.request.url
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'none'" in r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


@pytest.fixture
def live(tmp_path: Path) -> Iterator[str]:
    """A real `fhir-node serve` with short head and body deadlines."""
    env = {"FHIR_NODE_HEADER_TIMEOUT_SECONDS": "1", "FHIR_NODE_BODY_TIMEOUT_SECONDS": "1"}
    with serve_node(f"sqlite:///{tmp_path / 'n.db'}", tmp_path, env) as base:
        yield base


def _raw(base: str, data: bytes, wait: float = 10) -> tuple[bytes, float]:
    """Send `data` on a fresh connection; what the server answers until it closes, and how long it took."""
    host, port = httpx.URL(base).host, httpx.URL(base).port
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=wait) as s:
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer, time.monotonic() - start


def test_a_real_server_bounds_heads_and_bodies_and_names_no_software(live: str) -> None:
    r = httpx.get(f"{live}/metadata")
    assert r.status_code == 200 and "server" not in r.headers
    assert r.headers["x-content-type-options"] == "nosniff"

    answer, _ = _raw(live, b"GET /fhir/metadata HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 70_000)
    assert answer.startswith(b"HTTP/1.1 431 ")
    big = httpx.get(f"{live}/metadata", headers={"X-Big": "a" * 60_000})
    assert big.status_code == 200  # under the 64 KiB default

    answer, took = _raw(live, b"GET /fhir/metadata HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    assert answer.startswith(b"HTTP/1.1 408 ") and took < 5

    head = b"POST /fhir/Patient HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/fhir+json\r\n"
    answer, took = _raw(live, head + b"Content-Length: 100\r\n\r\n" + b'{"resourceType":')
    assert answer.startswith(b"HTTP/1.1 408 ") and b'"code":"timeout"' in answer and took < 5
    assert httpx.get(f"{live}/Patient").json().get("total", 0) == 0

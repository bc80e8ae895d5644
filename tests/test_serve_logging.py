"""`fhir-node serve` logs JSON lines on stderr in every worker process: with several workers, uvicorn starts
each one afresh, and the logging set up by the command itself did not reach them (no access line at all)."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
from live_node import serve_node


def test_every_worker_writes_its_access_log_as_json_lines(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fhir-node.db'}"
    with serve_node(url, tmp_path, {"FHIR_NODE_LOG_LEVEL": "INFO"}, workers=2) as base, httpx.Client() as http:
        ids = [f"workers-{i}" for i in range(6)]
        for rid in ids:
            assert http.get(f"{base}/Patient", headers={"X-Request-Id": rid}).status_code == 200
    lines = [orjson.loads(line) for line in (tmp_path / "server.log").read_bytes().splitlines() if line.strip()]
    access = {line["request_id"]: line for line in lines if line["logger"] == "fhir_node.access"}
    assert set(ids) <= set(access)
    assert all(access[rid]["status"] == 200 and access[rid]["path"] == "/fhir/Patient" for rid in ids)
    started = [line for line in lines if line["message"].startswith("Started server process")]
    assert len(started) == 2  # each worker's own uvicorn lines, as JSON too

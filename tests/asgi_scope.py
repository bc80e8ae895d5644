"""The scope uvicorn hands the ASGI app for one HTTP request from a loopback client: for the tests and
benchmarks that call the app directly, to see what no HTTP client can do (a body cut short) or to leave the
socket out of a measurement."""

from __future__ import annotations

from typing import Any


def http_scope(
    method: str, path: str, query: bytes = b"", headers: tuple[tuple[bytes, bytes], ...] = ()
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8080"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }

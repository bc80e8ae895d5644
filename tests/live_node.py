"""Start the node the way an operator does (`fhir-node serve`), for tests that need a real HTTP server."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

BASE_HOST = "http://127.0.0.1:8080"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_node(
    database_url: str,
    log_dir: Path,
    extra_env: dict[str, str] | None = None,
    workers: int = 1,
    args: Sequence[str] = (),
    verify: ssl.SSLContext | str | bool = True,
) -> Iterator[str]:
    """Run `python -m fhir_node serve --host 127.0.0.1 --port N [args]` until the block ends; yield the FHIR base,
    https when `args` hold `--ssl-certfile` (`verify`: how the readiness check trusts that certificate).
    The server's pid goes to `log_dir/server.pid` (benchmarks read its memory)."""
    port = free_port()
    env = {**os.environ, "FHIR_NODE_DATABASE_URL": database_url, **(extra_env or {})}
    log = (log_dir / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fhir_node",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            *args,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    scheme = "https" if "--ssl-certfile" in args else "http"
    base = f"{scheme}://127.0.0.1:{port}/fhir"
    (log_dir / "server.pid").write_text(str(proc.pid))
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"fhir-node serve exited: {(log_dir / 'server.log').read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/metadata", timeout=1, verify=verify).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("fhir-node serve did not answer /fhir/metadata within 30 s")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()

"""Shared by the research benchmarks (consent_search.py, export_load.py): the `fhir-node synth` scenario
(projects, patients, inclusions, research consents: 3 in 4 accept, 1 in 10 change their mind) written
straight into a database through the node's store code (validation, index rows, versions; no HTTP),
and a node served with JWTs so the same queries can be asked as the aggregator and as the operator."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from jwt_keys import TestIssuer, jwt_settings  # noqa: E402
from live_node import serve_node  # noqa: E402
from search_load import database, load_direct  # noqa: E402

from fhir_node.security import keyring  # noqa: E402
from fhir_node.synth import TYPE_ORDER, Options, synth  # noqa: E402

#: The scenario without its audit trail: the research benchmarks read inclusions, consents and patients.
TYPES = tuple(t for t in TYPE_ORDER if t != "AuditEvent")
ISSUER = TestIssuer()
CALLERS = {"aggregator": ("bihr-central-index", "aggregator"), "operator": ("node-operator", "operator")}


@contextlib.contextmanager
def kept_or_fresh(kind: str, keep: str | None, tmp: Path) -> Iterator[tuple[str, bool]]:
    """The database to use, and whether it holds the scenario already: `keep` (a SQLite file, reused when it
    exists, with its pseudonym key kept beside it as `keep.key`), else a fresh one."""
    if keep and kind == "sqlite":
        key = Path(f"{keep}.key").resolve()
        if not key.exists():
            keyring.keygen(key)
        os.environ["FHIR_NODE_PSEUDONYM_KEY_FILE"] = str(key)  # the loader's and the served node's
        yield f"sqlite:///{Path(keep).resolve()}", Path(keep).exists()
        return
    with database(kind, tmp) as url:
        yield url, False


def load_scenario(database_url: str, patients: int, seed: int = 1, batch: int = 2000) -> dict[str, int]:
    """Generate the scenario (NDJSON, our ids) and write it in type order; returns resources per type."""
    from fhir_node.store.database import Database

    db = Database(database_url)
    db.migrate()
    db.dispose()
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as out:
        synth(Options(patients, seed, Path(out), "ndjson"))
        for res_type in TYPES:
            lines = (Path(out) / f"{TYPE_ORDER.index(res_type) + 1}-{res_type}.ndjson").read_bytes().splitlines()
            counts[res_type] = len(load_direct(database_url, map(orjson.loads, lines), batch))
    return counts


@contextlib.contextmanager
def jwt_node(database_url: str, tmp: Path, workers: int = 1, **env: str) -> Iterator[str]:
    """`fhir-node serve` with FHIR_NODE_AUTH=jwt trusting ISSUER (loopback, no TLS), audit off unless asked."""
    settings = jwt_settings(ISSUER.jwks_json())
    environ = {f"FHIR_NODE_{k.upper()}": str(v) for k, v in settings.items()}
    environ |= {"FHIR_NODE_LOG_LEVEL": "WARNING", "FHIR_NODE_AUDIT": "false", **env}
    with serve_node(database_url, tmp, environ, workers=workers) as base:
        yield base


def bearer(caller: str) -> str:
    sub, role = CALLERS[caller]
    return f"Bearer {ISSUER.token(sub, role, 'system/*.rs', lifetime=24 * 3600)}"

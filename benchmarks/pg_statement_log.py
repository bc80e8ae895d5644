"""What a `fhir-node serve` on PostgreSQL sends the server per request (issue 11: one round trip per read):
turns on the server's statement log (`log_statement = 'all'`), sends a few searches and reads, and prints
every statement the node's server processes logged for them, request by request.

    python benchmarks/pg_statement_log.py

Needs the throwaway test cluster (PostgreSQL server binaries installed, FHIR_NODE_TEST_POSTGRES_URL unset):
its log file is read directly.
"""

from __future__ import annotations

import random
import re
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_load import Conn, database, episode, load_direct, organization, patient, serve_node

from fhir_node.store.database import Database

#: A log line of the default `log_line_prefix` ('%m [%p] '): the server process and what it logged.
_LINE = re.compile(r"^\S+ \S+ \S+ \[(\d+)\] (LOG|ERROR|FATAL):\s+(.*)$")


def main() -> None:
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmpdir, database("postgresql", Path(tmpdir)) as url:
        Database(url).migrate()
        patient_ids = load_direct(url, [patient(rng) for _ in range(20)])
        org_ids = load_direct(url, [organization(i) for i in range(2)])
        load_direct(url, [episode(rng, i, rng.choice(patient_ids), rng.choice(org_ids)) for i in range(100)])
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            log = Path(conn.exec_driver_sql("SHOW data_directory").scalar_one()).parent / "server.log"
            conn.exec_driver_sql("ALTER SYSTEM SET log_statement = 'all'")
            conn.exec_driver_sql("SELECT pg_reload_conf()")
        requests = [
            "/fhir/EpisodeOfCare?status=active&date=ge2024-01-01&_count=50",
            f"/fhir/EpisodeOfCare?patient=Patient/{patient_ids[0]}",
            f"/fhir/EpisodeOfCare?organization=Organization/{org_ids[0]}&_count=50",
            f"/fhir/Patient/{patient_ids[0]}",
        ]
        env = {"FHIR_NODE_LOG_LEVEL": "WARNING", "FHIR_NODE_ENFORCE_PROFILES": "false", "FHIR_NODE_AUDIT": "false"}
        with serve_node(url, Path(tmpdir), env) as base:
            client = Conn("127.0.0.1", int(base.split(":")[2].split("/")[0]))
            for path in requests:  # the pool's first connection and each query's first run
                client.request("GET", path)
            time.sleep(0.5)
            for path in requests:
                start = log.stat().st_size
                status, _ = client.request("GET", path)
                time.sleep(0.3)  # the server writes its log asynchronously
                with log.open() as f:
                    f.seek(start)
                    logged = [m.groups() for m in map(_LINE.match, f.read().splitlines()) if m]
                print(f"GET {path} -> {status}: {len(logged)} statement(s)")
                for pid, level, message in logged:
                    print(f"  [{pid}] {level}: {message[:150]}")
        with admin.connect() as conn:
            conn.exec_driver_sql("ALTER SYSTEM RESET log_statement")
            conn.exec_driver_sql("SELECT pg_reload_conf()")
        admin.dispose()


if __name__ == "__main__":
    main()

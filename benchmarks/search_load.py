"""Search benchmark (issue 4): load EpisodeOfCare (with their patients and organisations) into a real
`fhir-node serve`, then run searches from concurrent clients and report throughput, latency and RSS.

    python benchmarks/search_load.py --database sqlite --episodes 2000
    python benchmarks/search_load.py --database postgresql --episodes 2000
    python benchmarks/search_load.py --database sqlite --episodes 100000 --audit-events 1000000 --load direct

`--load http` posts every resource through the API in transaction Bundles of 100 (what the
resources/s figure measures);
`--load direct` writes through the node's own store code in-process (same rows, no HTTP), to reach
large volumes in reasonable time. Searches always go over HTTP, 4 clients, rotating the three queries.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import itertools
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import create_engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from live_node import serve_node  # noqa: E402
from postgres_server import start_postgres  # noqa: E402

from fhir_node.rules import check_digits  # noqa: E402
from fhir_node.security import keyring  # noqa: E402

SSIN = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/ssin"
NIHDI = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/nihdi"
H = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


def ssin(rng: random.Random) -> str:
    """A valid SSIN for a birth between 1930 and 1999."""
    birth = datetime.date(rng.randint(1930, 1999), rng.randint(1, 12), rng.randint(1, 28))
    return check_digits.ssin(birth, rng.randint(1, 997))


def patient(rng: random.Random) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": SSIN, "value": ssin(rng)}]}


def organization(i: int) -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "identifier": [{"system": NIHDI, "value": f"{i:08d}"}],
        "name": f"PSI {i}",
        "active": True,
    }


def episode(rng: random.Random, i: int, patient_id: str, org_id: str) -> dict[str, Any]:
    start = f"{rng.randint(2019, 2025)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    period: dict[str, str] = {"start": start}
    if rng.random() < 0.3:
        period["end"] = f"{int(start[:4]) + 1}{start[4:]}"
    return {
        "resourceType": "EpisodeOfCare",
        "identifier": [{"system": "urn:fhir-node:bench:inclusion", "value": str(i)}],
        "status": "finished" if "end" in period else rng.choice(["active", "active", "active", "onhold"]),
        "type": [
            {
                "coding": [
                    {"system": "urn:fhir-node:bench:inclusion-status", "code": rng.choice(["principal", "information"])}
                ]
            }
        ],
        "patient": {"reference": f"Patient/{patient_id}"},
        "managingOrganization": {"reference": f"Organization/{org_id}"},
        "period": period,
    }


def audit_event(rng: random.Random, patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "action": "R",
        "recorded": f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T10:00:00Z",
        "outcome": "0",
        "agent": [{"requestor": True, "who": {"identifier": {"system": SSIN, "value": ssin(rng)}}}],
        "source": {"observer": {"display": "fhir-node"}},
        "entity": [{"what": {"reference": f"Patient/{patient_id}"}}],
    }


class Conn:
    """One keep-alive HTTP/1.1 connection (http.client: the cheapest client, so the server is measured)."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.c = http.client.HTTPConnection(host, port)
        self.headers = H | (headers or {})

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        self.c.request(method, path, body=body, headers=self.headers)
        r = self.c.getresponse()
        return r.status, r.read()


def load_http(host: str, port: int, resources: list[dict[str, Any]], clients: int, bundle_size: int) -> list[str]:
    """POST transaction Bundles of `bundle_size` creates, `clients` connections in parallel; returns the
    assigned ids in order."""
    ids: list[str] = [""] * len(resources)
    starts = list(range(0, len(resources), bundle_size))

    def worker(k: int) -> None:
        conn = Conn(host, port)
        for start in starts[k::clients]:
            chunk = resources[start : start + bundle_size]
            entries = [{"resource": r, "request": {"method": "POST", "url": r["resourceType"]}} for r in chunk]
            body = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
            status, answer = conn.request("POST", "/fhir", orjson.dumps(body))
            if status != 200:
                raise RuntimeError(f"transaction failed {status}: {answer[:300]!r}")
            for i, e in enumerate(orjson.loads(answer)["entry"]):
                ids[start + i] = e["response"]["location"].split("/")[1]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ids


def load_direct(database_url: str, resources: Iterable[dict[str, Any]], batch: int = 1000) -> list[str]:
    """Write through the node's store (validation, index rows, versions) without HTTP, in batches, read
    lazily (a large scenario need not be in memory at once); a resource's own `id` is kept."""
    from fhir_node.interactions.incoming import check_resource
    from fhir_node.interactions.write import create_in
    from fhir_node.settings import Settings
    from fhir_node.store.batch import batched
    from fhir_node.store.database import Database

    keyring.install(keyring.keyring_for(Settings(database_url=database_url)))  # the server's key
    db = Database(database_url)
    ids = []
    items = iter(resources)
    while chunk := list(itertools.islice(items, batch)):
        with db.write() as conn, batched(conn):
            for res in chunk:
                checked = check_resource(res, res["resourceType"], enforce_profiles=False)
                ids.append(create_in(conn, res["resourceType"], checked, res.get("id")).version.res_id)
    db.dispose()
    return ids


def population(episodes: int) -> tuple[int, int]:
    """How many Patients and Organizations go with `episodes` EpisodeOfCare: two episodes a patient, forty
    an organisation (fifty organisations at most)."""
    return max(1, episodes // 2), max(1, min(50, episodes // 40))


def load_population(
    load: Callable[[list[dict[str, Any]]], list[str]], episodes: int, rng: random.Random
) -> tuple[list[str], list[str]]:
    """`population(episodes)`'s Patients and Organizations, then the EpisodeOfCare, written by `load`
    (`load_direct` or over HTTP); the Patients' and Organizations' ids."""
    n_patients, n_orgs = population(episodes)
    patient_ids = load([patient(rng) for _ in range(n_patients)])
    org_ids = load([organization(i) for i in range(n_orgs)])
    load([episode(rng, i, rng.choice(patient_ids), rng.choice(org_ids)) for i in range(episodes)])
    return patient_ids, org_ids


def search_mix(patient_ids: list[str], org_ids: list[str], rounds: int) -> list[str]:
    """The three searches, `rounds` times: active since 2024 (the same page each time), one patient's
    episodes, one organisation's (patients and organisations in turn)."""
    queries = []
    for i in range(rounds):
        queries += [
            "/fhir/EpisodeOfCare?status=active&date=ge2024-01-01&_count=50",
            f"/fhir/EpisodeOfCare?patient=Patient/{patient_ids[i % len(patient_ids)]}",
            f"/fhir/EpisodeOfCare?organization=Organization/{org_ids[i % len(org_ids)]}&_count=50",
        ]
    return queries


def rss_kb(pid: int) -> int:
    """Resident set size of the server process and its children (uvicorn workers), in KiB."""
    total = 0
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by the server process and its children (uvicorn workers):
    on a shared machine the CPU per search moves much less from run to run than searches/s."""
    total = 0
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(FileNotFoundError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def analyze(url: str) -> None:
    """Planner statistics for the fresh data, as autovacuum gathers them within a minute of a bulk load: the
    searches are then timed with the plans a running node has, not with the guesses made without statistics."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
    finally:
        engine.dispose()


def postmaster_pid(url: str) -> int | None:
    """The PostgreSQL server's main process, when it runs on this machine (its backends are its children)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            backend = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        if not Path(f"/proc/{backend}/cmdline").read_bytes().startswith(b"postgres"):
            return None  # a server elsewhere: that pid is some other process here
        fields = Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1])
    except OSError:
        return None
    finally:
        engine.dispose()


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            for child in (task / "children").read_text().split():
                out += [int(child), *_children(int(child))]
    return out


def run_gets(
    host: str, port: int, queries: list[str], total: int, clients: int, headers: dict[str, str] | None = None
) -> tuple[float, list[float]]:
    """`total` GETs of `queries` (in turn) over `clients` connections (with `headers`, e.g. a token);
    returns wall seconds and per-request latencies (ms)."""
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        conn = Conn(host, port, headers)
        mine = []
        for i in range(k, total, clients):
            t0 = time.perf_counter()
            status, body = conn.request("GET", queries[i % len(queries)])
            mine.append((time.perf_counter() - t0) * 1000)
            if status != 200:
                raise RuntimeError(f"GET failed {status}: {body[:300]!r}")
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, latencies


def pseudonym_key(tmp: Path) -> None:
    """A pseudonym key file in `tmp` for the nodes this process starts or loads directly."""
    key = tmp / "pseudonym.key"
    keyring.keygen(key)
    os.environ["FHIR_NODE_PSEUDONYM_KEY_FILE"] = str(key)


@contextlib.contextmanager
def database(kind: str, tmp: Path) -> Iterator[str]:
    """A database URL, with a pseudonym key file made for it (the server's, and `load_direct`'s)."""
    pseudonym_key(tmp)
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'bench.db'}"
        return
    with start_postgres() as server, server.fresh_database() as url:
        yield url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--episodes", type=int, default=2000)
    ap.add_argument("--audit-events", type=int, default=0)
    ap.add_argument("--searches", type=int, default=500)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--load", choices=["http", "direct"], default="http")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--bundle", type=int, default=100, help="creates per transaction Bundle (--load http)")
    ap.add_argument("--audit", choices=["on", "off"], default="on", help="FHIR_NODE_AUDIT: an AuditEvent per request")
    args = ap.parse_args()

    rng = random.Random(42)
    with tempfile.TemporaryDirectory() as tmpdir, database(args.database, Path(tmpdir)) as url:
        tmp = Path(tmpdir)
        if args.load == "direct":
            from fhir_node.store.database import Database

            Database(url).migrate()
        env = {
            "FHIR_NODE_LOG_LEVEL": "WARNING",
            "FHIR_NODE_ENFORCE_PROFILES": "false",
            "FHIR_NODE_AUDIT": "true" if args.audit == "on" else "false",
        }
        with serve_node(url, tmp, env, workers=args.workers) as base:
            host, port = "127.0.0.1", int(base.split(":")[2].split("/")[0])
            pid = server_pid(tmp)
            t0 = time.perf_counter()
            load = (
                (lambda rs: load_http(host, port, rs, args.clients, args.bundle))
                if args.load == "http"
                else (lambda rs: load_direct(url, rs))
            )
            patient_ids, org_ids = load_population(load, args.episodes, rng)
            if args.audit_events:
                load([audit_event(rng, rng.choice(patient_ids)) for _ in range(args.audit_events)])
            loaded = len(patient_ids) + len(org_ids) + args.episodes + args.audit_events
            load_s = time.perf_counter() - t0
            if args.database == "postgresql":
                analyze(url)
            queries = search_mix(patient_ids, org_ids, args.searches)
            run_gets(host, port, queries, min(100, args.searches), args.clients)  # warm-up
            postmaster = postmaster_pid(url) if args.database == "postgresql" else None
            cpu0, db_cpu0 = cpu_seconds(pid), cpu_seconds(postmaster) if postmaster else 0.0
            wall, lat = run_gets(host, port, queries, args.searches, args.clients)
            cpu = cpu_seconds(pid) - cpu0
            db_cpu = cpu_seconds(postmaster) - db_cpu0 if postmaster else None
            lat.sort()
            report = {
                "database": args.database,
                "load": args.load,
                "workers": args.workers,
                "audit": args.audit,
                "episodes": args.episodes,
                "audit_events": args.audit_events,
                "resources_loaded": loaded,
                "resources_per_s": round(loaded / load_s, 1),
                "searches": args.searches,
                "searches_per_s": round(args.searches / wall, 1),
                "p50_ms": round(statistics.median(lat), 2),
                "p95_ms": round(lat[int(len(lat) * 0.95) - 1], 2),
                "server_cpu_us_per_search": round(cpu / args.searches * 1e6),
                # PostgreSQL's own processes (SQLite runs inside the node, so its share is in the line above).
                "database_cpu_us_per_search": None if db_cpu is None else round(db_cpu / args.searches * 1e6),
                "server_rss_mib": round(rss_kb(pid) / 1024, 1),
            }
            print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


def server_pid(tmp: Path) -> int:
    return int((tmp / "server.pid").read_text())


if __name__ == "__main__":
    main()

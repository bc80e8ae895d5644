"""Searches while big transaction Bundles are written (a tester loading data while aggregators query): a real
`fhir-node serve` with the search benchmark's EpisodeOfCare, `--clients` connections searching the whole
time, and `--bundles` transaction Bundles of `--bundle-size` Patients posted one after the other meanwhile.
Reports the searches' latency while a Bundle was being written and while none was, and each Bundle's time.

    python benchmarks/search_during_write.py [--database postgresql] [--audit off]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_load import Conn, database, episode, load_http, organization, patient, serve_node


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--episodes", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--bundles", type=int, default=3)
    ap.add_argument("--bundle-size", type=int, default=2000)
    ap.add_argument("--audit", choices=["on", "off"], default="on")
    args = ap.parse_args()

    rng = random.Random(42)
    with tempfile.TemporaryDirectory() as tmpdir, database(args.database, Path(tmpdir)) as url:
        tmp = Path(tmpdir)
        env = {
            "FHIR_NODE_LOG_LEVEL": "WARNING",
            "FHIR_NODE_ENFORCE_PROFILES": "false",
            "FHIR_NODE_AUDIT": "true" if args.audit == "on" else "false",
        }
        with serve_node(url, tmp, env) as base:
            host, port = "127.0.0.1", int(base.split(":")[2].split("/")[0])
            patient_ids = load_http(host, port, [patient(rng) for _ in range(args.episodes // 2)], 4, 100)
            org_ids = load_http(host, port, [organization(i) for i in range(50)], 1, 100)
            episodes = [episode(rng, i, rng.choice(patient_ids), rng.choice(org_ids)) for i in range(args.episodes)]
            load_http(host, port, episodes, 4, 100)
            queries = [
                "/fhir/EpisodeOfCare?status=active&date=ge2024-01-01&_count=50",
                *(f"/fhir/EpisodeOfCare?patient=Patient/{p}" for p in patient_ids[:50]),
                *(f"/fhir/EpisodeOfCare?organization=Organization/{o}&_count=50" for o in org_ids[:8]),
            ]
            done: list[tuple[float, float]] = []  # (started, ms)
            stop = threading.Event()
            lock = threading.Lock()

            def search(k: int) -> None:
                conn, mine, i = Conn(host, port), [], k
                while not stop.is_set():
                    started = time.perf_counter()
                    status, body = conn.request("GET", queries[i % len(queries)])
                    if status != 200:
                        raise RuntimeError(f"GET failed {status}: {body[:300]!r}")
                    mine.append((started, (time.perf_counter() - started) * 1000))
                    i += args.clients
                with lock:
                    done.extend(mine)

            searchers = [threading.Thread(target=search, args=(k,)) for k in range(args.clients)]
            for t in searchers:
                t.start()
            writing: list[tuple[float, float]] = []
            writer = Conn(host, port)
            writer.c.timeout = 300  # a Bundle starved of the write lock for 5 minutes fails the run
            time.sleep(1)
            for _ in range(args.bundles):
                entries = [
                    {"resource": patient(rng), "request": {"method": "POST", "url": "Patient"}}
                    for _ in range(args.bundle_size)
                ]
                body = orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})
                t0 = time.perf_counter()
                status, answer = writer.request("POST", "/fhir", body)
                writing.append((t0, time.perf_counter()))
                if status != 200:
                    raise RuntimeError(f"transaction failed {status}: {answer[:300]!r}")
                time.sleep(1)
            stop.set()
            for t in searchers:
                t.join()

            def during(started: float, ms: float) -> bool:
                ended = started + ms / 1000
                return any(started < t1 and ended > t0 for t0, t1 in writing)

            inside = [ms for s, ms in done if during(s, ms)]
            outside = [ms for s, ms in done if not during(s, ms)]
            report = {
                "database": args.database,
                "audit": args.audit,
                "bundle_seconds": [round(t1 - t0, 2) for t0, t1 in writing],
                "searches_while_writing": len(inside),
                "while_writing_p50_p95_max_ms": [percentile(inside, q) for q in (0.5, 0.95, 1.0)],
                "searches_otherwise": len(outside),
                "otherwise_p50_p95_max_ms": [percentile(outside, q) for q in (0.5, 0.95, 1.0)],
                "searches_per_s_while_writing": round(len(inside) / sum(t1 - t0 for t0, t1 in writing), 1),
                "median_ms": round(statistics.median(ms for _, ms in done), 1),
            }
            print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()

"""Read benchmark (REST core): load Patients into a real `fhir-node serve`, then read them by id from
concurrent clients and report reads/s, p50, p95 and the server's RSS.

    python benchmarks/read_load.py --database sqlite --patients 1000 --reads 5000
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from pathlib import Path

import orjson
from search_load import database, load_http, patient, rss_kb, run_gets, serve_node, server_pid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--reads", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmpdir, database(args.database, Path(tmpdir)) as url:
        env = {"FHIR_NODE_LOG_LEVEL": "WARNING", "FHIR_NODE_ENFORCE_PROFILES": "false"}
        with serve_node(url, Path(tmpdir), env, workers=args.workers) as base:
            host, port = "127.0.0.1", int(base.split(":")[2].split("/")[0])
            ids = load_http(host, port, [patient(rng) for _ in range(args.patients)], args.clients, 100)
            paths = [f"/fhir/Patient/{i}" for i in ids]
            run_gets(host, port, paths, min(500, args.reads), args.clients)  # warm-up
            wall, lat = run_gets(host, port, paths, args.reads, args.clients)
            lat.sort()
            report = {
                "database": args.database,
                "workers": args.workers,
                "reads": args.reads,
                "reads_per_s": round(args.reads / wall, 1),
                "p50_ms": round(statistics.median(lat), 2),
                "p95_ms": round(lat[int(len(lat) * 0.95) - 1], 2),
                "server_rss_mib": round(rss_kb(server_pid(Path(tmpdir))) / 1024, 1),
            }
            print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()

"""What the web page costs over the FHIR calls it makes: a real `fhir-node serve`, Patients, Organizations and
EpisodeOfCare loaded over HTTP, then the same search as a FHIR call and as the search page (one in-process FHIR
call plus the HTML), and a patient's page (four FHIR calls) against those four calls made directly.

    python benchmarks/web_pages.py [--database postgresql] [--episodes 2000] [--requests 1000] [--audit on]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from pathlib import Path

import orjson
from search_load import database, episode, load_http, organization, patient, run_gets, serve_node


def measure(host: str, port: int, paths: list[str], total: int, clients: int) -> dict[str, float]:
    run_gets(host, port, paths, min(100, total), clients)  # warm-up
    wall, lat = run_gets(host, port, paths, total, clients)
    lat.sort()
    return {
        "per_s": round(total / wall, 1),
        "p50_ms": round(statistics.median(lat), 2),
        "p95_ms": round(lat[int(len(lat) * 0.95) - 1], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--episodes", type=int, default=2000)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--audit", choices=["on", "off"], default="off")
    args = ap.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmpdir, database(args.database, Path(tmpdir)) as url:
        env = {
            "FHIR_NODE_LOG_LEVEL": "WARNING",
            "FHIR_NODE_ENFORCE_PROFILES": "false",
            "FHIR_NODE_AUDIT": "true" if args.audit == "on" else "false",
        }
        with serve_node(url, Path(tmpdir), env) as base:
            host, port = "127.0.0.1", int(base.split(":")[2].split("/")[0])
            orgs = load_http(host, port, [organization(i) for i in range(20)], args.clients, 100)
            patients = load_http(host, port, [patient(rng) for _ in range(args.episodes // 2)], args.clients, 100)
            episodes = [episode(rng, i, rng.choice(patients), rng.choice(orgs)) for i in range(args.episodes)]
            load_http(host, port, episodes, args.clients, 100)
            some = patients[:200]
            about = [
                f"/fhir/Patient/{p}" if k == 0 else f"/fhir/{t}?patient=Patient/{p}&_sort=-date"
                for p in some
                for k, t in enumerate(("Patient", "EpisodeOfCare", "Consent", "AuditEvent"))
            ]
            kinds = {
                "fhir search": ["/fhir/EpisodeOfCare?status=active&_count=20"],
                "search page": ["/search?resource=EpisodeOfCare&status=active&_count=20&run=1"],
                "fhir: a patient's 4 calls": about,
                "patient page": [f"/patient/{p}" for p in some],
            }
            report = {"database": args.database, "episodes": args.episodes, "audit": args.audit}
            for name, paths in kinds.items():
                total = args.requests * (4 if name.startswith("fhir: ") else 1)
                report[name] = measure(host, port, paths, total, args.clients)
            print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()

"""What pseudonymising the SSIN costs (issue 10): Patients and their EpisodeOfCare loaded over HTTP into a
real `fhir-node serve` (SQLite, its key made beside the database), then each query kind timed on its own:
search by SSIN against the same search by id, and a page of Patients (whose SSINs are turned back into
clear for the caller). Runs against an older checkout too (PYTHONPATH=that checkout), for the figures
before pseudonymisation.

    python benchmarks/pseudonym_cost.py --patients 5000 --searches 2000
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from live_node import serve_node  # noqa: E402
from search_load import SSIN, episode, load_http, organization, patient, run_gets  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=5000)
    ap.add_argument("--searches", type=int, default=2000, help="per query kind")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--audit", choices=["on", "off"], default="off")
    args = ap.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        env = {
            "FHIR_NODE_LOG_LEVEL": "WARNING",
            "FHIR_NODE_ENFORCE_PROFILES": "false",
            "FHIR_NODE_AUDIT": "true" if args.audit == "on" else "false",
        }
        with serve_node(f"sqlite:///{tmp / 'bench.db'}", tmp, env) as base:
            host, port = "127.0.0.1", int(base.split(":")[2].split("/")[0])
            patients = [patient(rng) for _ in range(args.patients)]
            t0 = time.perf_counter()
            patient_ids = load_http(host, port, patients, args.clients, 100)
            org_ids = load_http(host, port, [organization(i) for i in range(20)], 1, 100)
            load_http(
                host,
                port,
                [episode(rng, i, pid, rng.choice(org_ids)) for i, pid in enumerate(patient_ids)],
                args.clients,
                100,
            )
            loaded = 2 * args.patients + 20
            report: dict[str, object] = {"patients": args.patients, "audit": args.audit}
            report["load_resources_per_s"] = round(loaded / (time.perf_counter() - t0), 1)
            picks = [rng.randrange(args.patients) for _ in range(500)]
            ssins = [patients[i]["identifier"][0]["value"] for i in picks]
            ids = [patient_ids[i] for i in picks]
            kinds = {
                "Patient by SSIN": [f"/fhir/Patient?identifier={SSIN}|{s}" for s in ssins],
                "Patient by _id": [f"/fhir/Patient?_id={i}" for i in ids],
                "EpisodeOfCare by patient.identifier": [
                    f"/fhir/EpisodeOfCare?patient.identifier={SSIN}|{s}" for s in ssins
                ],
                "EpisodeOfCare by patient": [f"/fhir/EpisodeOfCare?patient=Patient/{i}" for i in ids],
                "page of 50 Patients": ["/fhir/Patient?_count=50"],
            }
            for name, queries in kinds.items():
                with httpx.Client() as check:  # each kind finds what it looks for
                    assert check.get(f"http://{host}:{port}{queries[0]}").json().get("entry"), name
                run_gets(host, port, queries, 200, args.clients)  # warm-up
                wall, lat = run_gets(host, port, queries, args.searches, args.clients)
                lat.sort()
                report[name] = {
                    "per_s": round(args.searches / wall, 1),
                    "p50_ms": round(statistics.median(lat), 2),
                    "p95_ms": round(lat[int(len(lat) * 0.95) - 1], 2),
                }
            print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()

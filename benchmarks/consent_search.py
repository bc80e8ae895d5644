"""Search speed with consent filtering on vs off: the same searches asked by the aggregator (only
patients whose latest research consent is an active permit, and their data: filtered in SQL) and by the
operator (everything: no filtering), alternated, on the `fhir-node synth` scenario.

    python benchmarks/consent_search.py --patients 20000 [--database postgresql] [--searches 400] [--keep F]

Audit is off (FHIR_NODE_AUDIT=false) so the figures show the filter, not the log. Counts are exact
(`_summary=count` counts every match); the aggregator's would be masked below 5 (none is here).
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson
from research_data import bearer, jwt_node, kept_or_fresh, load_scenario
from search_load import run_gets


def timed(base: str, caller: str, query: str, total: int, clients: int) -> dict[str, float]:
    """`total` GETs of `query` as `caller` over `clients` keep-alive connections."""
    url = urlsplit(base)
    wall, latencies = run_gets(
        url.hostname or "", url.port or 80, [f"{url.path}/{query}"], total, clients, {"Authorization": bearer(caller)}
    )
    latencies.sort()
    return {
        "per_s": round(total / wall, 1),
        "p50_ms": round(statistics.median(latencies), 2),
        "p95_ms": round(latencies[max(0, int(len(latencies) * 0.95) - 1)], 2),
    }


def first(base: str, caller: str, query: str) -> dict:
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port)
    conn.request("GET", f"{url.path}/{query}", headers={"Authorization": bearer(caller)})
    return orjson.loads(conn.getresponse().read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--patients", type=int, default=20000)
    ap.add_argument("--searches", type=int, default=400, help="per query and caller")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="aggregator and operator runs alternated this often")
    ap.add_argument("--keep", help="SQLite file to keep the loaded scenario in (reused when it exists)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir, kept_or_fresh(args.database, args.keep, Path(tmpdir)) as (url, had):
        t0 = time.perf_counter()
        counts = load_scenario(url, args.patients) if not had else "reused"
        loaded_s = time.perf_counter() - t0
        with jwt_node(url, Path(tmpdir)) as base:
            org = first(base, "operator", "Organization?_count=1")["entry"][0]["resource"]["id"]
            queries = {
                "inclusions, active, page of 50": "EpisodeOfCare?status=active&_count=50",
                "inclusions of a project, page of 50": f"EpisodeOfCare?organization=Organization/{org}&_count=50",
                "patients, page of 50": "Patient?_count=50",
                "count of inclusions": "EpisodeOfCare?_summary=count",
            }
            report: dict = {"database": args.database, "loaded": counts, "load_s": round(loaded_s, 1), "queries": {}}
            for name, query in queries.items():
                totals = {
                    c: first(base, c, "EpisodeOfCare?_summary=count" if "count" in name else query)
                    for c in ("aggregator", "operator")
                }
                runs: dict[str, list[dict[str, float]]] = {"aggregator": [], "operator": []}
                searches = args.searches if "count" not in name else max(10, args.searches // 20)
                for caller in ("aggregator", "operator"):
                    timed(base, caller, query, min(20, searches), args.clients)  # warm-up
                for _ in range(args.rounds):
                    for caller in ("aggregator", "operator"):
                        runs[caller].append(timed(base, caller, query, searches, args.clients))
                report["queries"][name] = {
                    "query": query,
                    "counted": {c: t.get("total") for c, t in totals.items()} if "count" in name else None,
                    **{f"{c} (consent {'on' if c == 'aggregator' else 'off'})": r for c, r in runs.items()},
                }
            print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()

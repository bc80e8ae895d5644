"""Bulk Data export throughput: the `fhir-node synth` scenario (default: 74,405 patients, which is about
100,000 inclusions) in a database, then `GET /fhir/$export` as the aggregator (consent-filtered: only
patients whose latest research consent is a permit) and as the operator (everything), each polled to
completion and every file downloaded.

    python benchmarks/export_load.py [--patients 74405] [--database postgresql] [--keep /tmp/big.db]

Reports resources exported per second from kick-off to the complete manifest (the job runs in the
node's background runner, one worker), and the download rate. `--keep FILE` (SQLite) keeps the loaded
database and reuses it on the next run.
"""

from __future__ import annotations

import argparse
import http.client
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson
from research_data import bearer, jwt_node, kept_or_fresh, load_scenario


def request(base: str, caller: str, method: str, url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url if "://" in url else f"{base}/{url}")
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    conn.request(method, path, headers={"Authorization": bearer(caller), **headers})
    r = conn.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def export(base: str, caller: str) -> dict[str, float]:
    t0 = time.perf_counter()
    status, headers, body = request(
        base, caller, "GET", "$export", Prefer="respond-async", Accept="application/fhir+json"
    )
    if status != 202:
        raise RuntimeError(f"kick-off {status}: {body[:300]!r}")
    polls = 0
    while True:
        status, _, body = request(base, caller, "GET", headers["content-location"])
        polls += 1
        if status == 200:
            break
        if status != 202:
            raise RuntimeError(f"status {status}: {body[:300]!r}")
        time.sleep(0.5)
    done = time.perf_counter() - t0
    manifest = orjson.loads(body)
    exported = sum(item["count"] for item in manifest["output"])
    types = dict.fromkeys(item["type"] for item in manifest["output"])  # a type may span several files
    t1, size = time.perf_counter(), 0
    for item in manifest["output"]:
        status, _, content = request(base, caller, "GET", item["url"])
        if status != 200:
            raise RuntimeError(f"download {status}")
        size += len(content)
    download = time.perf_counter() - t1
    return {
        "exported": exported,
        "per_type": {t: sum(i["count"] for i in manifest["output"] if i["type"] == t) for t in types},
        "export_s": round(done, 1),
        "resources_per_s": round(exported / done, 1),
        "polls": polls,
        "download_mib": round(size / 2**20, 1),
        "download_mib_per_s": round(size / 2**20 / download, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--patients", type=int, default=74405)
    ap.add_argument("--keep", help="SQLite file to keep the loaded scenario in (reused when it exists)")
    ap.add_argument("--callers", default="aggregator,operator")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir, kept_or_fresh(args.database, args.keep, Path(tmpdir)) as (url, had):
        report: dict = {"database": args.database}
        if not had:
            t0 = time.perf_counter()
            report["loaded"] = load_scenario(url, args.patients)
            report["load_s"] = round(time.perf_counter() - t0, 1)
        with jwt_node(url, Path(tmpdir)) as base:
            for caller in args.callers.split(","):
                report[caller] = export(base, caller)
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()

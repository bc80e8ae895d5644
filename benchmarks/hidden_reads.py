"""Does a 404 tell a hidden id from a missing one by its timing? (issue 9: "a read of an id the caller may
not see answers 404, exactly as a missing id (same body, same timing order of magnitude)".)

    python benchmarks/hidden_reads.py [--reads 500] [--database postgresql]

The access-control world of the tests (tests/access_data.py), served with FHIR_NODE_AUTH=jwt and the audit
on; patient P1 reads, in turn, another patient's inclusion (it exists: hidden) and an id that does not
exist (missing), through the real ASGI app. Prints the median and p95 milliseconds of each, and checks the
two answers' bodies are the same but for the id asked.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from access_data import headers, secured  # noqa: E402
from search_load import database  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--reads", type=int, default=500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, database(args.database, Path(tmp)) as url:
        run(url, args.reads)


def run(url: str, reads: int) -> None:
    with secured(url) as (client, world):
        auth = headers("patient")
        paths = {"hidden": f"/fhir/{world.ref('B2')}", "missing": f"/fhir/EpisodeOfCare/{uuid.uuid4()}"}
        times: dict[str, list[float]] = {name: [] for name in paths}
        bodies: dict[str, bytes] = {}
        for i in range(reads * 2 + 20):
            name = "hidden" if i % 2 else "missing"
            t0 = time.perf_counter()
            r = client.get(paths[name], headers=auth)
            elapsed = (time.perf_counter() - t0) * 1000
            if r.status_code != 404:
                raise RuntimeError(f"{name}: {r.status_code} {r.text[:200]}")
            bodies[name] = r.content.replace(paths[name].removeprefix("/fhir/").encode(), b"<asked>")
            if i >= 20:  # after a warm-up
                times[name].append(elapsed)
        same = bodies["hidden"] == bodies["missing"]
        report = {
            name: {"median_ms": round(statistics.median(t), 3), "p95_ms": round(sorted(t)[int(len(t) * 0.95)], 3)}
            for name, t in times.items()
        }
        out = {"database": url.split(":")[0], "same_body_but_the_id": same, **report}
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()

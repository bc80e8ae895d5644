"""Memory after big Bundles (issue 12): a real `fhir-node serve` takes 10,000-entry transactions of valid
BIHR resources (from `fhir-node synth`, profiles enforced); its resident memory is read before, at the
peak, and a few seconds after each. Freed memory should go back to the system, not stay at the peak.
The baseline is taken after a 200-entry transaction of the same kind, so what the first validated write
loads for good (profiles, terminology, compiled FHIRPath) is in it.

    python benchmarks/bundle_memory.py --database sqlite
    python benchmarks/bundle_memory.py --database postgresql --bundles 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from search_load import ROOT, database, rss_kb, serve_node, server_pid

sys.path.insert(0, str(ROOT / "tests"))
from synth_bundle import big_transaction

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def post_watching(pid: int, base: str, body: bytes) -> tuple[httpx.Response, float, int]:
    """POST `body`; the answer, the seconds it took, and the server's peak RSS (KiB) meanwhile."""
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_kb(pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    t0 = time.perf_counter()
    r = httpx.post(base, content=body, headers=FHIR_JSON, timeout=1200)
    took = time.perf_counter() - t0
    done.set()
    watcher.join()
    return r, took, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--bundles", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir, database(args.database, Path(tmpdir)) as url:
        tmp = Path(tmpdir)
        bodies = [big_transaction(tmp / f"synth{i}", args.entries, seed=i + 1) for i in range(args.bundles)]
        warm_up = big_transaction(tmp / "warm-up", 200, seed=99)
        env = {"FHIR_NODE_LOG_LEVEL": "WARNING", "FHIR_NODE_ENFORCE_PROFILES": "true"}
        with serve_node(url, tmp, env) as base:
            pid = server_pid(tmp)
            assert httpx.post(base, content=warm_up, headers=FHIR_JSON, timeout=600).status_code == 200
            time.sleep(3)
            print(f"{args.database}: baseline {mib(rss_kb(pid))}")
            for i, body in enumerate(bodies):
                r, took, peak = post_watching(pid, base, body)
                assert r.status_code == 200, r.text[:500]
                time.sleep(3)
                print(
                    f"bundle {i + 1} ({args.entries} entries, {len(body) / 2**20:.1f} MiB): {took:.1f} s, "
                    f"peak {mib(peak)}, 3 s after {mib(rss_kb(pid))}"
                )


if __name__ == "__main__":
    main()

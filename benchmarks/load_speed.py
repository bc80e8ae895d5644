"""`fhir-node load` over HTTP of the `fhir-node synth` scenario in transaction Bundles of 100, with profile
enforcement on and off: resources per second, and the server's CPU per resource (what moves least on a
shared machine), and the loader's.

    python benchmarks/load_speed.py [--patients 500] [--profiles on,off] [--database postgresql]
        [--workers 1] [--in-flight 2]

Each run gets a fresh database and a fresh node (`fhir-node serve`, `--workers` workers, audit off). The
scenario is the NDJSON shape (one file per type, in reference order), loaded as an operator would:
`fhir-node load DIR --url BASE --batch-size 100 --in-flight N` (Bundles on their way at once).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from search_load import cpu_seconds, database, serve_node, server_pid

from fhir_node.synth import Options, synth


def run(kind: str, scenario: Path, profiles: str, batch: int, workers: int, in_flight: int) -> dict[str, object]:
    """One load into a fresh database and node; the loader runs as its own process, as an operator runs it."""
    with tempfile.TemporaryDirectory() as tmpdir, database(kind, Path(tmpdir)) as url:
        env = {"FHIR_NODE_ENFORCE_PROFILES": "true" if profiles == "on" else "false", "FHIR_NODE_AUDIT": "false"}
        env["FHIR_NODE_LOG_LEVEL"] = "WARNING"
        with serve_node(url, Path(tmpdir), env, workers=workers) as base:
            pid = server_pid(Path(tmpdir))
            cpu0, loader0, t0 = cpu_seconds(pid), _children_cpu(), time.perf_counter()
            command = [sys.executable, "-m", "fhir_node", "load", str(scenario), "--url", base]
            options = ["--batch-size", str(batch), "--in-flight", str(in_flight), "--quiet"]
            done = subprocess.run([*command, *options], capture_output=True, text=True)
            seconds, cpu, loader = time.perf_counter() - t0, cpu_seconds(pid) - cpu0, _children_cpu() - loader0
        summary = done.stdout.strip().splitlines()[0] if done.stdout.strip() else done.stderr[-500:]
        if done.returncode != 0:
            raise RuntimeError(f"fhir-node load failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        resources = int(summary.split(": ", 1)[1].split()[0])
        return {
            "profiles": profiles,
            "resources": resources,
            "seconds": round(seconds, 1),
            "resources_per_s": round(resources / seconds),
            "server_cpu_ms_per_resource": round(1000 * cpu / resources, 3),
            "server_cpu_bound_resources_per_s": round(resources / cpu),
            "loader_cpu_ms_per_resource": round(1000 * loader / resources, 3),
        }


def _children_cpu() -> float:
    """CPU seconds used by this process's finished children (the loader runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--patients", type=int, default=500)
    ap.add_argument("--profiles", default="on,off", help="runs, in order: on, off or both")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--in-flight", type=int, default=2, help="Bundles the loader has on their way at once")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        synth(Options(args.patients, 1, Path(out), "ndjson"))
        report = [
            run(args.database, Path(out), p, args.batch_size, args.workers, args.in_flight)
            for p in args.profiles.split(",")
        ]
    summary = {
        "database": args.database,
        "patients": args.patients,
        "workers": args.workers,
        "in_flight": args.in_flight,
        "runs": report,
    }
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()

"""Throughput of validation, since it runs on every write: validate_structure over the official R4
examples, or with `--synth N` what an enforcing write checks (validate_structure, then conformance:
core invariants and the node's profiles) over the resources of an N-patient `fhir-node synth` scenario,
per type, in CPU time.

Run: python benchmarks/validate_speed.py [seconds]   (default 3)
     python benchmarks/validate_speed.py --synth 300
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import orjson

from fhir_node.synth import Options, synth
from fhir_node.validation.structure import validate_structure
from fhir_node.validation.validator import conformance

EXAMPLES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "r4-examples"


def examples(seconds: float) -> None:
    resources = [json.loads(path.read_bytes()) for path in sorted(EXAMPLES.glob("*.json"))]
    for resource in resources:  # warm-up: loading the schema and building validators happen once
        validate_structure(resource)
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for resource in resources:
            validate_structure(resource)
        count += len(resources)
    print(f"{count / elapsed:.0f} resources/s ({count} validations of {len(resources)} examples in {elapsed:.1f} s)")


def scenario(patients: int) -> None:
    with tempfile.TemporaryDirectory() as out:
        synth(Options(patients, 1, Path(out), "ndjson"))
        resources = [
            orjson.loads(line) for f in sorted(Path(out).glob("*.ndjson")) for line in f.read_bytes().splitlines()
        ]
    for resource in resources[:200]:  # warm-up: schema, definitions, compiled expressions
        validate_structure(resource)
        conformance(resource)
    spent: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for resource in resources:
        t0 = time.process_time()
        validate_structure(resource)
        t1 = time.process_time()
        conformance(resource)
        row = spent[resource["resourceType"]]
        row[0], row[1], row[2] = row[0] + 1, row[1] + t1 - t0, row[2] + time.process_time() - t1
    for res_type, (n, structure, profiles) in [
        *spent.items(),
        ("all", [sum(r[i] for r in spent.values()) for i in range(3)]),
    ]:
        print(
            f"{res_type:14} {int(n):5d}  structure {1000 * structure / n:.3f} ms, conformance "
            f"{1000 * profiles / n:.3f} ms, both {n / (structure + profiles):.0f} resources/s"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seconds", nargs="?", type=float, default=3.0)
    ap.add_argument("--synth", type=int, metavar="PATIENTS", help="validate a synth scenario as enforcing writes do")
    args = ap.parse_args()
    if args.synth:
        scenario(args.synth)
    else:
        examples(args.seconds)


if __name__ == "__main__":
    main()

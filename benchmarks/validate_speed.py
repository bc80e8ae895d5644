"""Throughput of validate_structure over the official R4 examples, since it runs on every write.

Run: python benchmarks/validate_speed.py [seconds]   (default 3)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from fhir_node.validation.structure import validate_structure

EXAMPLES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "r4-examples"


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    resources = [json.loads(path.read_bytes()) for path in sorted(EXAMPLES.glob("*.json"))]
    for resource in resources:  # warm-up: loading the schema and building validators happen once
        validate_structure(resource)
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for resource in resources:
            validate_structure(resource)
        count += len(resources)
    print(f"{count / elapsed:.0f} resources/s ({count} validations of {len(resources)} examples in {elapsed:.1f} s)")


if __name__ == "__main__":
    main()

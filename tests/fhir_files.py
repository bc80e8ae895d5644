"""Read back what `fhir-node synth` and examples/ hold: every resource, with Bundle entries unpacked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from fhir_node.load import files

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def resources_in(*paths: Path) -> Iterator[dict[str, Any]]:
    """Every resource in the JSON and NDJSON files under `paths`, in file order."""
    for path in files(paths):
        if path.suffix == ".ndjson":
            yield from (orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip())
            continue
        data = orjson.loads(path.read_bytes())
        if data.get("resourceType") == "Bundle":
            yield from (e["resource"] for e in data.get("entry", []) if "resource" in e)
        else:
            yield data


def identifiers(value: Any) -> Iterator[dict[str, Any]]:
    """Every Identifier anywhere in `value` (resources' own, and those of references)."""
    if isinstance(value, list):
        for v in value:
            yield from identifiers(v)
    elif isinstance(value, dict):
        if isinstance(value.get("system"), str) and isinstance(value.get("value"), str):
            yield value
        for v in value.values():
            yield from identifiers(v)

"""One big transaction Bundle of valid BIHR resources (from `fhir-node synth`), for the tests and the
benchmark that need a heavy write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from fhir_node.synth import Options, synth


def big_transaction(out: Path, entries: int, seed: int = 12) -> bytes:
    """A transaction of exactly `entries` entries: synth's project Bundles merged, each directory entry
    once (they carry the same conditional creates). Another `seed`, other patients."""
    synth(Options(patients=entries // 2, seed=seed, out=out, chunk=entries))
    merged: dict[str, Any] = {}
    for path in sorted(out.glob("*.json")):
        for entry in orjson.loads(path.read_bytes())["entry"]:
            merged.setdefault(entry["fullUrl"], entry)
    assert len(merged) >= entries, f"synth gave {len(merged)} entries, fewer than {entries}"
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": list(merged.values())[:entries]})

"""What the node publishes besides its API: the guide's sources, an example per profile, and the guide's
npm package as a tarball. Read from the files the node ships (profiles/, terminology/, examples/), as
`/fhir/metadata` is built from the node's own definitions: public, and about no one."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from fhir_node.conformance.package import ROOT, build, guide_of, shipped

EXAMPLES = ROOT / "examples" / "resources"


@cache
def profiles() -> dict[str, dict[str, Any]]:
    """The guide's StructureDefinitions by id."""
    return {r["id"]: r for r in shipped().values() if r["resourceType"] == "StructureDefinition"}


def guide() -> dict[str, Any]:
    return guide_of(shipped())


@cache
def _examples() -> dict[str, dict[str, Any]]:
    """The first example resource (by file name) claiming each profile, by profile URL."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(EXAMPLES.glob("*.json")):
        resource = json.loads(path.read_text(encoding="utf-8"))
        for url in resource.get("meta", {}).get("profile", ()):
            found.setdefault(url, resource)
    return found


def example(profile: dict[str, Any]) -> str | None:
    """A conforming example of the profile, pretty-printed, when examples/ holds one."""
    resource = _examples().get(profile["url"])
    return json.dumps(resource, indent=2, ensure_ascii=False) if resource else None


def package_name() -> str:
    """The npm tarball's file name, `be.fhir-node.bihr-0.1.0.tgz`."""
    g = guide()
    return f"{g['packageId']}-{g['version']}.tgz"


@cache
def package_tarball() -> bytes:
    """The guide's npm package (what `fhir-node package` writes) as the tarball npm serves: `package/...`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "package"
        build(out, shipped())
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(out, arcname="package")
    return buffer.getvalue()

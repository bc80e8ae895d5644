"""Rebuild the Belgian (eHealth platform) definitions the validator carries, from their public FSH source.

be-core and infsec are published only as FSH on GitHub (hl7-be/core, hl7-be/infsec) and as packages on the
FHIR package server, which is not reachable from here. So this compiles the FSH at a pinned commit with SUSHI,
the official FSH compiler, and keeps the definitions our guide relies on (the extensions it uses, and the
terminology their bindings name), each StructureDefinition with a snapshot made by our own snapshot generator
(SUSHI writes differentials only). A developer reruns it when a pin below changes; the node and the tests
only read its output, in fhir_node/data/packages/ (see the README there).

    git clone https://github.com/hl7-be/core /tmp/be-core
    git clone https://github.com/hl7-be/infsec /tmp/be-infsec
    python scripts/build_be_definitions.py --core /tmp/be-core --infsec /tmp/be-infsec

Needs git, Node.js and npm. SUSHI needs the R4 core package in a FHIR package cache; the same definitions
come in the official `hl7.fhir.r4.examples` npm package, which this lays out as `hl7.fhir.r4.core#4.0.1` in
a throwaway cache. SUSHI's warnings about its automatic dependencies (tools, terminology, extensions
packages) and errors in be-core's logical models (they use a tools-package extension) do not touch the
definitions kept here; a kept definition missing from its output stops the script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from extract_r4_definitions import EXAMPLES_PACKAGE, fetch_package, write_json

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fhir_node.conformance.snapshot import with_snapshots  # noqa: E402
from fhir_node.validation.terminology import DEPENDENCIES_DIR  # noqa: E402

SUSHI = "fsh-sushi@3.21.0"
#: package id -> (version, pinned commit of its GitHub source, the resources kept as `Type-id`)
SOURCES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "hl7.fhir.be.core": ("2.1.2", "b0cf499b413006bf64e6d99c31757dcf117ea18a", ("StructureDefinition-be-ext-recorder",)),
    "hl7.fhir.be.infsec": (
        "1.1.0",
        "a860d9584aa56e3f66a34d791f62cfb4dd49c822",
        (
            "StructureDefinition-be-ext-pseudonymization",
            "ValueSet-be-vs-pseudonymization-type",
            "CodeSystem-be-cs-pseudonymization-type",
        ),
    ),
}
CONFORMANCE = ("StructureDefinition", "ValueSet", "CodeSystem", "SearchParameter", "OperationDefinition")


def core_package_cache(home: Path) -> None:
    """Lay out hl7.fhir.r4.core#4.0.1 in `home`/.fhir/packages from the examples package's definitions."""
    target = home / ".fhir" / "packages" / "hl7.fhir.r4.core#4.0.1" / "package"
    target.mkdir(parents=True)
    index = []
    for path, blob in fetch_package(*EXAMPLES_PACKAGE).items():
        name = Path(path).name
        if not name.endswith(".json") or name.startswith(".") or name == "package.json":
            continue
        resource = json.loads(blob)
        if resource.get("resourceType") in CONFORMANCE:
            (target / name).write_bytes(blob)
            index.append({"filename": name, **{k: resource[k] for k in ("resourceType", "id", "url") if k in resource}})
    (target / ".index.json").write_text(json.dumps({"index-version": 1, "files": index}))
    manifest = {"name": "hl7.fhir.r4.core", "version": "4.0.1", "fhirVersions": ["4.0.1"], "type": "Core"}
    (target / "package.json").write_text(json.dumps(manifest))


def compile_fsh(checkout: Path, commit: str, work: Path, home: Path) -> Path:
    """SUSHI's output folder for the source at `commit` (exported from the checkout, whatever is checked out)."""
    work.mkdir()
    archive = subprocess.run(["git", "-C", str(checkout), "archive", commit], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive.stdout, check=True)
    env = {**os.environ, "HOME": str(home)}
    result = subprocess.run(
        ["npm", "exec", "--yes", f"--package={SUSHI}", "--", "sushi", "build", str(work)],
        env=env,
        capture_output=True,
        text=True,
    )
    print(result.stdout[-1500:], file=sys.stderr)
    return work / "fsh-generated" / "resources"


def kept(generated: Path, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The chosen resources of one package, StructureDefinitions with a generated snapshot."""
    missing = [n for n in names if not (generated / f"{n}.json").is_file()]
    if missing:
        raise SystemExit(f"SUSHI did not produce {', '.join(missing)} in {generated}")
    resources = {n: json.loads((generated / f"{n}.json").read_text(encoding="utf-8")) for n in names}
    built = with_snapshots(r for r in resources.values() if r["resourceType"] == "StructureDefinition")
    return {n: built[r["url"]] if r["resourceType"] == "StructureDefinition" else r for n, r in resources.items()}


def manifest(guide_file: Path, version: str, commit: str) -> dict[str, Any]:
    """The package's identity as its npm manifest states it, from the ImplementationGuide SUSHI wrote."""
    guide = json.loads(guide_file.read_text(encoding="utf-8"))
    if guide["version"] != version:
        raise SystemExit(f"{guide_file}: version {guide['version']}, not the pinned {version}")
    return {
        "name": guide["packageId"],
        "version": guide["version"],
        "title": guide["title"],
        "description": f"The definitions fhir-node uses, compiled from the FSH source at commit {commit}",
        "canonical": guide["url"].split("/ImplementationGuide/")[0],
        "fhirVersions": guide["fhirVersion"],
        "license": guide.get("license", ""),
        "type": "fhir.ig",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--core", type=Path, required=True, help="a git clone of github.com/hl7-be/core")
    parser.add_argument("--infsec", type=Path, required=True, help="a git clone of github.com/hl7-be/infsec")
    args = parser.parse_args()
    checkouts = {"hl7.fhir.be.core": args.core, "hl7.fhir.be.infsec": args.infsec}
    with tempfile.TemporaryDirectory(prefix="be-definitions-") as tmp:
        home = Path(tmp) / "home"
        core_package_cache(home)
        for package, (version, commit, names) in SOURCES.items():
            generated = compile_fsh(checkouts[package], commit, Path(tmp) / package, home)
            out = DEPENDENCIES_DIR / package
            for old in out.glob("*.json"):
                old.unlink()
            write_json(
                out / "package.json",
                manifest(generated / f"ImplementationGuide-{package}.json", version, commit),
                indent=2,
            )
            for name, resource in kept(generated, names).items():
                write_json(out / f"{name}.json", resource, indent=2)
            print(f"{package} {version} ({commit[:12]}): {len(names)} resources in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

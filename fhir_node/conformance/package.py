"""`fhir-node package`: the guide in profiles/ and terminology/ as a standard FHIR npm package.

The output directory holds what an npm tarball's `package/` folder holds: package.json, .index.json and one
JSON file per resource, with every StructureDefinition's snapshot regenerated from its differential, so
any FHIR tool (the HL7 Java validator with `-ig DIR`) can load it; plus `other/`, a readable HTML page per
profile generated from its snapshot. The ImplementationGuide resource is the single source of the
package's identity (id, version, FHIR version, dependencies); the checks below keep the sources in line
with it, and `--refresh-snapshots` writes the regenerated snapshots back into profiles/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from functools import cache
from pathlib import Path
from typing import Any

from fhir_node.conformance.snapshot import SnapshotError, with_snapshots
from fhir_node.web.guide import index_page, profile_page
from fhir_node.web.render import stylesheet

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = (ROOT / "profiles", ROOT / "terminology")
DEFAULT_OUT = ROOT / "package"
CORE_PACKAGE = ("hl7.fhir.r4.core", "4.0.1")

#: Resource types whose `url` and `version` make them canonical, hence under the guide's one base.
CANONICAL_TYPES = frozenset(
    {"StructureDefinition", "SearchParameter", "CodeSystem", "ValueSet", "ImplementationGuide", "OperationDefinition"}
)


class PackageError(ValueError):
    """The sources do not make a consistent package (the message lists every problem)."""


def load_sources(dirs: tuple[Path, ...] = SOURCE_DIRS) -> dict[str, dict[str, Any]]:
    """Every resource of the guide, by file name (`StructureDefinition-bihr-patient.json`)."""
    sources: dict[str, dict[str, Any]] = {}
    for directory in dirs:
        for path in sorted(directory.glob("*.json")):
            if path.name in sources:
                raise PackageError(f"{path.name} is in more than one source directory")
            sources[path.name] = json.loads(path.read_text(encoding="utf-8"))
    return sources


@cache
def shipped() -> dict[str, dict[str, Any]]:
    """The guide the node ships (`SOURCE_DIRS`), read once per process (~10 MB parsed) and shared by the
    published resources, the web pages and the served package: read it, never edit it."""
    return load_sources()


def guide_of(sources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    guides = [r for r in sources.values() if r["resourceType"] == "ImplementationGuide"]
    if len(guides) != 1:
        raise PackageError(f"expected one ImplementationGuide among the sources, found {len(guides)}")
    return guides[0]


def canonical_base(guide: dict[str, Any]) -> str:
    """`https://fhir-node.be/fhir` from the guide's own URL."""
    return guide["url"].rsplit("/ImplementationGuide/", 1)[0]


def problems(sources: dict[str, dict[str, Any]]) -> list[str]:
    """What keeps the sources from being one package: names, canonical URLs, versions, the guide's list."""
    guide = guide_of(sources)
    base, version = canonical_base(guide), guide["version"]
    found: list[str] = []
    for name, resource in sources.items():
        kind, rid = resource["resourceType"], resource.get("id", "")
        if name != f"{kind}-{rid}.json":
            found.append(f"{name}: a {kind} with id {rid!r} belongs in {kind}-{rid}.json")
        if kind in CANONICAL_TYPES:
            if resource.get("url") != f"{base}/{kind}/{rid}":
                found.append(f"{name}: url {resource.get('url')} is not {base}/{kind}/{rid}")
            if resource.get("version") != version:
                found.append(f"{name}: version {resource.get('version')} is not the guide's {version}")
        if kind == "StructureDefinition" and not resource.get("differential", {}).get("element"):
            found.append(f"{name}: no differential")
    listed = {e["reference"]["reference"] for e in guide["definition"]["resource"]}
    present = {f"{r['resourceType']}/{r['id']}" for r in sources.values() if r is not guide}
    found += [f"the guide lists {ref}, which is not in the sources" for ref in sorted(listed - present)]
    found += [f"the guide does not list {ref}" for ref in sorted(present - listed)]
    return found


def with_fresh_snapshots(sources: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The sources with every StructureDefinition's snapshot generated again from its differential."""
    profiles = {r["url"]: name for name, r in sources.items() if r["resourceType"] == "StructureDefinition"}
    built = with_snapshots(sources[name] for name in profiles.values())
    out = dict(sources)
    for url, name in profiles.items():
        out[name] = _snapshot_before_differential(built[url])
    return out


def _snapshot_before_differential(profile: dict[str, Any]) -> dict[str, Any]:
    """The usual key order of a StructureDefinition: snapshot, then differential, at the end."""
    head = {k: v for k, v in profile.items() if k not in ("snapshot", "differential")}
    return {**head, "snapshot": profile["snapshot"], "differential": profile["differential"]}


def package_json(guide: dict[str, Any]) -> dict[str, Any]:
    """The npm manifest, derived from the ImplementationGuide resource."""
    base = canonical_base(guide)
    dependencies = dict([CORE_PACKAGE]) | {d["packageId"]: d["version"] for d in guide.get("dependsOn", ())}
    return {
        "name": guide["packageId"],
        "version": guide["version"],
        "description": guide["description"].split("\n\n", 1)[0].replace("\n", " "),
        "author": guide.get("publisher", ""),
        "fhirVersions": guide["fhirVersion"],
        "type": "fhir.ig",
        "license": guide.get("license", ""),
        "canonical": base,
        "url": base,
        "title": guide["title"],
        "jurisdiction": "urn:iso:std:iso:3166#BE",
        "dependencies": dependencies,
    }


def index_entry(filename: str, resource: dict[str, Any]) -> dict[str, Any]:
    """One `.index.json` row: what a package loader needs to find a resource without reading it."""
    entry = {"filename": filename, "resourceType": resource["resourceType"], "id": resource["id"]}
    for key in ("url", "version", "kind", "type"):
        if key in resource:
            entry[key] = resource[key]
    return entry


def build(out: Path = DEFAULT_OUT, sources: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Write the package into `out` (replacing a previous build there) and return its index rows."""
    sources = load_sources() if sources is None else sources
    found = problems(sources)
    if found:
        raise PackageError("; ".join(found))
    resources = with_fresh_snapshots(sources)
    _clear(out)
    (out / "other").mkdir(parents=True)
    guide = guide_of(resources)
    _write_json(out / "package.json", package_json(guide))
    entries = [index_entry(name, r) for name, r in sorted(resources.items())]
    _write_json(out / ".index.json", {"index-version": 1, "files": entries})
    for name, resource in resources.items():
        _write_json(out / name, resource)
        if resource["resourceType"] == "StructureDefinition":
            (out / "other" / name.replace(".json", ".html")).write_text(profile_page(resource), encoding="utf-8")
    (out / "other" / "index.html").write_text(index_page(guide, resources), encoding="utf-8")
    (out / "other" / "web.css").write_text(stylesheet(), encoding="utf-8")
    return entries


def refresh_snapshots(directory: Path = ROOT / "profiles") -> list[str]:
    """Rewrite the StructureDefinitions in `directory` with regenerated snapshots; the names that changed."""
    sources = load_sources((directory,))
    changed = []
    for name, resource in with_fresh_snapshots(sources).items():
        if resource["resourceType"] == "StructureDefinition" and resource != sources[name]:
            _write_json(directory / name, resource)
            changed.append(name)
    return changed


def _clear(out: Path) -> None:
    """Empty `out` only when it is a previous build (or empty): never a directory this command did not make."""
    if out.exists():
        if any(out.iterdir()) and not (out / "package.json").is_file():
            raise PackageError(f"{out} is not empty and holds no previous package: refusing to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument(
        "--refresh-snapshots", action="store_true", help="also write the regenerated snapshots into profiles/"
    )


def add_parser(sub: Any) -> None:
    """Register `package` on the `fhir-node` command."""
    p = sub.add_parser("package", help="build the guide's FHIR npm package (profiles, terminology, HTML pages)")
    _add_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        if args.refresh_snapshots:
            for name in refresh_snapshots():
                print(f"fhir-node: snapshot of {name} regenerated", file=sys.stderr)
        entries = build(args.out)
    except (PackageError, SnapshotError) as exc:
        print(f"fhir-node: {exc}", file=sys.stderr)
        return 1
    print(f"fhir-node: package with {len(entries)} resources written to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fhir-node package", description=__doc__.splitlines()[0])
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

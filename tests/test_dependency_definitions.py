"""The definitions we carry of the packages our guide depends on (fhir_node/data/packages/): exactly the
guide's dependencies at their versions, every Belgian extension our guide, examples and code use, snapshots
that follow from their differentials, and none of it published as ours."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from fhir_node.conformance.package import build, guide_of, load_sources
from fhir_node.conformance.snapshot import with_snapshots
from fhir_node.validation.definitions import registry
from fhir_node.validation.terminology import DEPENDENCIES_DIR, terminology

ROOT = Path(__file__).resolve().parents[1]
BELGIAN_DEFINITION = re.compile(r"https://www\.ehealth\.fgov\.be/standards/fhir/[a-z-]+/StructureDefinition/[\w.-]+")


def carried() -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Per package folder: its package.json and its resources."""
    out = {}
    for folder in sorted(p for p in DEPENDENCIES_DIR.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.json"))
        manifest = json.loads((folder / "package.json").read_text())
        out[folder.name] = (manifest, [json.loads(f.read_text()) for f in files if f.name != "package.json"])
    return out


def test_carried_packages_are_the_guides_dependencies() -> None:
    guide = guide_of(load_sources())
    declared = {d["packageId"]: d["version"] for d in guide["dependsOn"]}
    assert {m["name"]: m["version"] for m, _ in carried().values()} == declared
    for folder, (manifest, resources) in carried().items():
        assert folder == manifest["name"]
        assert resources
        for r in resources:
            assert r["url"] == f"{manifest['canonical']}/{r['resourceType']}/{r['id']}"


def test_every_belgian_extension_we_use_is_carried() -> None:
    """A be-core or infsec definition named in our guide, examples, synthetic data or code is held by the
    validator: none is left to the "Unknown extension ... not checked" warning."""
    used: set[str] = set()
    for path in [*(ROOT / "profiles").glob("*.json"), *(ROOT / "examples").rglob("*.json")]:
        used |= set(BELGIAN_DEFINITION.findall(path.read_text()))
    for path in (ROOT / "fhir_node").rglob("*.py"):
        used |= set(BELGIAN_DEFINITION.findall(path.read_text()))
    assert {u.rsplit("/", 1)[-1] for u in used} >= {"be-ext-recorder", "be-ext-pseudonymization"}
    for url in used:
        definition = registry().get(url)
        assert definition is not None, f"{url} is used but not carried in {DEPENDENCIES_DIR}"
        assert definition.type == "Extension"


def test_snapshots_follow_from_the_differentials_and_bindings_resolve() -> None:
    definitions = [r for _, rs in carried().values() for r in rs if r["resourceType"] == "StructureDefinition"]
    regenerated = with_snapshots(copy.deepcopy(definitions))
    for definition in definitions:
        assert definition["snapshot"] == regenerated[definition["url"]]["snapshot"]
        for element in definition["differential"]["element"]:
            if element.get("binding", {}).get("strength") == "required":
                assert terminology().expansion(element["binding"]["valueSet"]) is not None


def test_carried_definitions_are_not_published_as_ours(client: TestClient, tmp_path: Path) -> None:
    urls = {r["url"] for _, rs in carried().values() for r in rs}
    assert not urls & set(registry().published())
    for url in urls:
        kind = url.split("/")[-2]
        found = client.get(f"/fhir/{kind}", params={"url": url})
        assert found.status_code == 200 and found.json().get("entry", []) == []
    ours = client.get(
        "/fhir/StructureDefinition", params={"url": "https://fhir-node.be/fhir/StructureDefinition/billing-period"}
    )
    assert len(ours.json()["entry"]) == 1
    build(tmp_path / "package")
    manifest = json.loads((tmp_path / "package" / "package.json").read_text())
    assert {m["name"]: m["version"] for m, _ in carried().values()}.items() <= manifest["dependencies"].items()
    packaged = {json.loads(p.read_text()).get("url") for p in (tmp_path / "package").glob("*.json")}
    assert not urls & packaged

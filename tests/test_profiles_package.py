"""The published guide: profiles with differential and generated snapshot, terminology for every binding,
one canonical base, SearchParameters the node serves, and `fhir-node package` building a FHIR npm package
that loads back."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import fhirpathpy
import pytest
from fhirpathpy.models import models

from fhir_node.cli import main as cli_main
from fhir_node.conformance.package import build, guide_of, load_sources, problems
from fhir_node.conformance.snapshot import SnapshotError, generate_snapshot, with_snapshots
from fhir_node.search.fhirpath import compile_expression
from fhir_node.search.registry import registry
from fhir_node.validation.structure import validate_structure

ROOT = Path(__file__).resolve().parents[1]
BASE = "https://fhir-node.be/fhir"
SOURCES = load_sources()
PROFILES = {r["url"]: r for r in SOURCES.values() if r["resourceType"] == "StructureDefinition"}
TERMINOLOGY = {
    json.loads(p.read_text())["url"]: json.loads(p.read_text())
    for p in (ROOT / "terminology").glob("*.json")
    if json.loads(p.read_text())["resourceType"] in ("CodeSystem", "ValueSet")
}
EXPECTED_PROFILES = {
    "bihr-inclusion": "EpisodeOfCare",
    "bihr-research-consent": "Consent",
    "bihr-patient": "Patient",
    "bihr-practitioner": "Practitioner",
    "bihr-organization": "Organization",
    "billing-period": "Extension",
    "audit-chain-previous": "Extension",
    **{
        f"bihr-audit-{v}{k}": "AuditEvent"
        for k in ("create", "read", "update", "delete", "query")
        for v in ("", "patient-")
    },
}


def snapshot_of(profile_id: str) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in PROFILES[f"{BASE}/StructureDefinition/{profile_id}"]["snapshot"]["element"]}


def test_the_expected_profiles_are_published() -> None:
    assert {p["id"]: p["type"] for p in PROFILES.values()} == EXPECTED_PROFILES


def test_sources_make_one_consistent_package() -> None:
    """File names, one canonical base, one version, and the guide lists exactly the resources."""
    assert problems(SOURCES) == []
    guide = guide_of(SOURCES)
    assert (guide["packageId"], guide["version"], guide["fhirVersion"]) == ("be.fhir-node.bihr", "0.1.0", ["4.0.1"])
    for resource in SOURCES.values():
        if "url" in resource:
            assert resource["url"] == f"{BASE}/{resource['resourceType']}/{resource['id']}"


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_resource_is_valid_r4(name: str) -> None:
    assert validate_structure(SOURCES[name]) == []


@pytest.mark.parametrize("url", sorted(PROFILES))
def test_profile_has_differential_and_the_snapshot_the_generator_makes(url: str) -> None:
    profile = PROFILES[url]
    assert profile["differential"]["element"]
    assert profile["snapshot"]["element"] == with_snapshots(PROFILES.values())[url]["snapshot"]["element"]


@pytest.mark.parametrize("url", sorted(PROFILES))
def test_differential_follows_snapshot_order(url: str) -> None:
    order = [e["id"] for e in PROFILES[url]["snapshot"]["element"]]
    positions = [order.index(e["id"]) for e in PROFILES[url]["differential"]["element"]]
    assert positions == sorted(positions)


def test_every_binding_and_code_system_of_ours_is_in_terminology() -> None:
    for profile in PROFILES.values():
        for element in profile["differential"]["element"]:
            value_set = element.get("binding", {}).get("valueSet", "")
            assert not value_set.startswith(BASE) or TERMINOLOGY[value_set]["resourceType"] == "ValueSet"
            for key, value in element.items():
                if key.startswith(("pattern", "fixed")) and isinstance(value, dict):
                    codings = value.get("coding", [value])
                    for system in (c.get("system", "") for c in codings):
                        assert not system.startswith(BASE) or TERMINOLOGY[system]["resourceType"] == "CodeSystem"
    for value_set in (r for r in TERMINOLOGY.values() if r["resourceType"] == "ValueSet"):
        for include in value_set["compose"]["include"]:
            assert not include["system"].startswith(BASE) or include["system"] in TERMINOLOGY


def test_every_invariant_is_an_error_fhirpathpy_compiles() -> None:
    for profile in PROFILES.values():
        for element in profile["differential"]["element"]:
            for constraint in element.get("constraint", ()):
                assert constraint["severity"] == "error"
                assert constraint["key"].startswith("bihr-")
                fhirpathpy.compile(constraint["expression"], models["r4"])


def test_inclusion_profile() -> None:
    e = snapshot_of("bihr-inclusion")
    assert e["EpisodeOfCare.type:inclusionStatus"]["min"] == 1
    assert e["EpisodeOfCare.type:inclusionStatus"]["mustSupport"] is True
    assert e["EpisodeOfCare.type:inclusionStatus"]["binding"] == {
        "strength": "required",
        "valueSet": f"{BASE}/ValueSet/inclusion-status",
    }
    assert e["EpisodeOfCare.managingOrganization"]["min"] == 1
    assert e["EpisodeOfCare.managingOrganization"]["type"][0]["targetProfile"] == [
        f"{BASE}/StructureDefinition/bihr-organization"
    ]
    assert e["EpisodeOfCare.period"]["min"] == e["EpisodeOfCare.period.start"]["min"] == 1
    assert e["EpisodeOfCare.patient.identifier.system"]["fixedUri"].endswith("/NamingSystem/ssin")
    recorder = e["EpisodeOfCare.extension:recorder"]
    assert recorder["type"][0]["profile"] == [
        "https://www.ehealth.fgov.be/standards/fhir/core/StructureDefinition/be-ext-recorder"
    ]
    assert [c["key"] for c in e["EpisodeOfCare.extension:recorder.value[x].identifier"]["constraint"]][
        -1
    ] == "bihr-nihdi"


def test_research_consent_profile() -> None:
    e = snapshot_of("bihr-research-consent")
    assert (e["Consent.patient"]["min"], e["Consent.dateTime"]["min"], e["Consent.provision"]["min"]) == (1, 1, 1)
    assert e["Consent.provision.type"]["min"] == 1
    assert e["Consent.scope"]["patternCodeableConcept"]["coding"][0]["code"] == "patient-privacy"
    assert e["Consent.category:patientConsent"]["patternCodeableConcept"]["coding"][0]["code"] == "59284-0"
    assert e["Consent.provision.purpose:research"]["patternCoding"]["code"] == "HRESCH"
    assert "bihr-consent-1" in [c["key"] for c in e["Consent"]["constraint"]]


def test_patient_profile_minimises_data() -> None:
    e = snapshot_of("bihr-patient")
    for gone in ("name", "birthDate", "telecom", "address"):
        assert e[f"Patient.{gone}"]["max"] == "0"
    assert (e["Patient.identifier:SSIN"]["min"], e["Patient.identifier:SSIN.value"]["min"]) == (1, 1)


@pytest.mark.parametrize(
    ("interaction", "action"), [("create", "C"), ("read", "R"), ("update", "U"), ("delete", "D"), ("query", "E")]
)
def test_audit_profiles_follow_balp(interaction: str, action: str) -> None:
    e = snapshot_of(f"bihr-audit-{interaction}")
    assert e["AuditEvent.type"]["patternCoding"]["code"] == "rest"
    assert e["AuditEvent.action"]["patternCode"] == action
    assert {"AuditEvent.agent:client", "AuditEvent.agent:server", "AuditEvent.agent:user"} <= e.keys()
    assert e["AuditEvent.agent:user.who.identifier.system"]["fixedUri"].endswith("/NamingSystem/ssin")
    if interaction == "query":
        assert e["AuditEvent.entity:query.query"]["min"] == 1
    else:
        assert e["AuditEvent.entity:data.what"]["min"] == 1
    patient = snapshot_of(f"bihr-audit-patient-{interaction}")
    assert PROFILES[f"{BASE}/StructureDefinition/bihr-audit-patient-{interaction}"]["baseDefinition"].endswith(
        f"bihr-audit-{interaction}"
    )
    ids = list(patient)
    assert ids.index("AuditEvent.entity:patient") > ids.index("AuditEvent.entity:transaction")
    assert patient["AuditEvent.entity:patient.role"]["patternCoding"]["code"] == "1"
    assert set(e) < set(patient)


def test_generator_refuses_what_a_profile_may_not_do() -> None:
    patient = PROFILES[f"{BASE}/StructureDefinition/bihr-patient"]

    def with_element(**element: Any) -> dict[str, Any]:
        broken = copy.deepcopy(patient)
        broken["differential"]["element"].append(element)
        return broken

    with pytest.raises(SnapshotError, match="raises max"):
        generate_snapshot(with_element(id="Patient.gender", path="Patient.gender", max="2"))
    with pytest.raises(SnapshotError, match="not in the base"):
        generate_snapshot(with_element(id="Patient.colour", path="Patient.colour", min=1))
    with pytest.raises(SnapshotError, match="not sliced"):
        generate_snapshot(with_element(id="Patient.link:x", path="Patient.link", sliceName="x"))
    with pytest.raises(SnapshotError, match="allows types"):
        generate_snapshot(
            with_element(id="Patient.gender", path="Patient.gender", type=[{"code": "string"}]),
        )


def test_search_parameters_are_served_by_the_node() -> None:
    params = [r for r in SOURCES.values() if r["resourceType"] == "SearchParameter"]
    assert {p["code"] for p in params} >= {"provision-type", "provision-purpose"}
    for definition in params:
        for base in definition["base"]:
            served = registry().get(base, definition["code"])
            assert served is not None and served.url == definition["url"]
    consent = {
        "resourceType": "Consent",
        "provision": {
            "type": "permit",
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"}],
            "provision": [{"type": "deny", "purpose": [{"system": f"{BASE}/CodeSystem/consent-purpose", "code": "x"}]}],
        },
    }
    assert compile_expression(registry().get("Consent", "provision-type").expression)(consent) == ["permit"]
    purposes = compile_expression(registry().get("Consent", "provision-purpose").expression)(consent)
    assert [p["code"] for p in purposes] == ["HRESCH", "x"]
    recorder = "https://www.ehealth.fgov.be/standards/fhir/core/StructureDefinition/be-ext-recorder"
    episode = {
        "resourceType": "EpisodeOfCare",
        "extension": [{"url": recorder, "valueReference": {"reference": "Practitioner/1"}}],
    }
    assert compile_expression(registry().get("EpisodeOfCare", "recorder").expression)(episode) == [
        {"reference": "Practitioner/1"}
    ]


def test_package_builds_and_loads_back(tmp_path: Path) -> None:
    out = tmp_path / "package"
    assert cli_main(["package", "--out", str(out)]) == 0
    manifest = json.loads((out / "package.json").read_text())
    assert manifest["name"] == "be.fhir-node.bihr"
    assert (manifest["version"], manifest["fhirVersions"], manifest["canonical"]) == ("0.1.0", ["4.0.1"], BASE)
    assert manifest["dependencies"]["hl7.fhir.r4.core"] == "4.0.1"
    index = json.loads((out / ".index.json").read_text())
    assert index["index-version"] == 1
    assert {row["filename"] for row in index["files"]} == set(SOURCES)
    loaded = {}
    for row in index["files"]:
        resource = json.loads((out / row["filename"]).read_text())
        assert (resource["resourceType"], resource["id"]) == (row["resourceType"], row["id"])
        for key in ("url", "version", "kind", "type"):
            assert resource.get(key) == row.get(key)
        loaded[row["filename"]] = resource
    profiles = [r for r in loaded.values() if r["resourceType"] == "StructureDefinition"]
    regenerated = with_snapshots(copy.deepcopy(profiles))
    for profile in profiles:
        assert profile["snapshot"] == regenerated[profile["url"]]["snapshot"]
        page = (out / "other" / f"StructureDefinition-{profile['id']}.html").read_text()
        assert profile["url"] in page and "<table>" in page
    assert "bihr-ssin" in (out / "other" / "StructureDefinition-bihr-patient.html").read_text()


def test_package_refuses_to_overwrite_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert cli_main(["package", "--out", str(tmp_path)]) == 1
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_build_rejects_inconsistent_sources(tmp_path: Path) -> None:
    sources = copy.deepcopy(SOURCES)
    sources["ValueSet-inclusion-status.json"]["url"] = "https://elsewhere.example/ValueSet/inclusion-status"
    sources["CodeSystem-inclusion-status.json"]["version"] = "9.9.9"
    found = problems(sources)
    assert len(found) == 2
    with pytest.raises(ValueError, match="elsewhere"):
        build(tmp_path / "package", sources)

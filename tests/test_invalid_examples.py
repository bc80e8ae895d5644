"""examples/invalid/: each file breaks one rule the node enforces, and the node refuses it with the status,
issue code and expression its manifest names; every valid example passes the profile validator."""

from __future__ import annotations

import orjson
import pytest
from fhir_files import EXAMPLES, resources_in
from starlette.testclient import TestClient

INVALID = EXAMPLES / "invalid"
MANIFEST = orjson.loads((INVALID / "manifest.json").read_bytes())
CASES = {case["file"]: case for case in MANIFEST["cases"]}


def test_the_manifest_names_every_file_once() -> None:
    on_disk = {p.name for p in INVALID.glob("*.json") if p.name != "manifest.json"}
    assert on_disk == set(CASES)
    assert {c["rule"] for c in CASES.values()} >= {"structure", "cardinality", "binding", "slice", "invariant"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_invalid_example_is_refused_as_named(enforcing_client: TestClient, name: str) -> None:
    case = CASES[name]
    resource = orjson.loads((INVALID / name).read_bytes())
    response = enforcing_client.post(
        f"/fhir/{resource['resourceType']}",
        content=orjson.dumps(resource),
        headers={"Content-Type": "application/fhir+json"},
    )
    assert response.status_code == case["status"], response.text
    issues = [i for i in response.json()["issue"] if i["severity"] in ("error", "fatal")]
    named = [i for i in issues if i["code"] == case["code"] and case["expression"] in i.get("expression", [])]
    assert named, f"{case['description']}: no {case['code']} issue at {case['expression']} in {issues}"
    if "diagnostics" in case:
        assert any(case["diagnostics"] in i["diagnostics"] for i in named), named
    assert "entry" not in enforcing_client.get(f"/fhir/{resource['resourceType']}").json()  # nothing written


def test_every_valid_example_conforms_to_our_profiles() -> None:
    from fhir_node.validation.validator import conformance, validate

    problems = []
    for resource in resources_in(EXAMPLES / "bundles", EXAMPLES / "resources"):
        issues = [*validate(resource), *conformance(resource)]
        errors = [i for i in issues if i.severity in ("error", "fatal")]
        problems += [(resource["resourceType"], e.code, e.expression, e.diagnostics) for e in errors]
    assert problems == []

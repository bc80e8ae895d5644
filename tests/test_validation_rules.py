"""What the validator learned from HL7's test cases (issue 13): required bindings only, the narrative rules
txt-1/txt-2, the rules R4 writes in prose (Bundles, published conformance resources), and a CLI that
judges only FHIR resources and says nothing about checks it cannot make."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fhir_node.cli import main
from fhir_node.conformance.package import load_sources
from fhir_node.validation.structure import validate_structure
from fhir_node.validation.validator import ERRORS, validate

ROOT = Path(__file__).resolve().parents[1]
XHTML = 'xmlns="http://www.w3.org/1999/xhtml"'


def errors(resource: dict[str, Any]) -> list[str]:
    return [f"{', '.join(i.expression)}: {i.diagnostics}" for i in validate(resource) if i.severity in ERRORS]


# --- bindings -----------------------------------------------------------------------------------------


def test_an_extensible_binding_accepts_other_codes_and_a_required_one_does_not():
    """Expression.language is extensible in R4: the schema's enum is no rule (13 false errors in mr-covid-bnd1)."""
    expression = {"language": "text/plain", "expression": "count of cases"}
    library = {"resourceType": "Library", "status": "active", "type": {"text": "logic"}}
    with_expression = {**library, "extension": [{"url": "http://example.org/x", "valueExpression": expression}]}
    assert validate_structure(with_expression) == []
    (issue,) = validate_structure({**library, "status": "finished"})
    assert issue.code == "code-invalid"
    assert issue.expression == ("Library.status",)


# --- narrative ------------------------------------------------------------------------------------------


def patient_with(div: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "text": {"status": "generated", "div": div}}


@pytest.mark.parametrize(
    ("div", "said"),
    [
        (f"<div {XHTML}><script>alert(1)</script>x</div>", "element <script>"),
        (f"<div {XHTML}><p onmouseover='x()'>x</p></div>", "event handler attribute 'onmouseover'"),
        (f"<div {XHTML}><a href=' java&#x09;script:x()'>x</a></div>", "'javascript:' scheme"),
        (f"<div {XHTML}><a href='data:text/html,x'>x</a></div>", "'data:' scheme"),
        (f"<div {XHTML}><img src='//tracker.example/p.gif'/>x</div>", "external reference"),
        (f"<div {XHTML}><span style='background:url(https://x/y)'>x</span></div>", "style"),
        (f"<div {XHTML}><form action='https://x'><input/></form></div>", "element <form>"),
        (f"<div {XHTML}><p foo='1'>x</p></div>", "attribute 'foo' is not allowed on <p>"),
        (f"<div {XHTML}><p> </p></div>", "txt-2"),
    ],
)
def test_narrative_rules_refuse_what_a_viewer_would_run_or_fetch(div, said):
    found = validate_structure(patient_with(div))
    assert [i.expression for i in found] == [("Patient.text.div",)]
    assert found[0].code == "invariant"
    assert said in found[0].diagnostics


def test_narrative_rules_apply_to_contained_resources_and_bundle_entries():
    bad = patient_with(f"<div {XHTML}><b onclick='x()'>x</b></div>")
    contained = {"resourceType": "Patient", "contained": [{**bad, "id": "p"}]}
    assert [i.expression for i in validate_structure(contained)] == [("Patient.contained[0].text.div",)]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": bad}]}
    assert [i.expression for i in validate_structure(bundle)] == [("Bundle.entry[0].resource.text.div",)]


def test_ordinary_narratives_pass():
    div = (
        f"<div {XHTML}><h3>Inclusion</h3><table class='grid'><tr><td colspan='2'>principal &amp; active"
        "</td></tr></table><p>See <a href='https://www.ehealth.fgov.be'>eHealth</a>, <a href='#x'>below</a>"
        " <img src='#photo' alt='photo'/> <img src='data:image/png;base64,iVBORw0KGgo='/></p></div>"
    )
    assert validate_structure(patient_with(div)) == []


def test_the_official_examples_with_narratives_still_pass():
    examples = [json.loads(p.read_text()) for p in sorted((ROOT / "tests/fixtures/r4-examples").glob("*.json"))]
    with_text = [e for e in examples if "text" in e]
    assert with_text
    for example in with_text:
        assert validate_structure(example) == [], example["id"]


# --- rules R4 states in prose -------------------------------------------------------------------------


def bundle(kind: str, *entries: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, **({"entry": list(entries)} if entries else {}), **extra}


@pytest.mark.parametrize(
    ("resource", "said"),
    [
        (bundle("collection", {"fullUrl": "Patient/1", "resource": {"resourceType": "Patient", "id": "1"}}),
         "must be an absolute URL"),
        (bundle("collection", {"fullUrl": "https://x.org/fhir/Patient/2", "resource": {"resourceType": "Patient",
                                                                                       "id": "1"}}),
         "does not end with Patient/1"),
        (bundle("searchset", {"fullUrl": "https://x.org/fhir/Patient/1", "resource": {"resourceType": "Patient"},
                              "search": {"mode": "match"}}), "ids"),
        (bundle("searchset", {"resource": {"resourceType": "Patient", "id": "1"}, "search": {"mode": "outcome"}}),
         "must be an OperationOutcome"),
        (bundle("searchset", link=[{"relation": "self", "url": "https://x/a"}, {"relation": "self", "url": "https://x/b"}]),
         "'self' may occur only once"),
        ({"resourceType": "ValueSet", "status": "active", "compose": {"include": [{"system": "#cs"}]}},
         "must be an absolute URI"),
        ({"resourceType": "ValueSet", "status": "active", "url": "ValueSet/local"}, "must be absolute"),
        ({"resourceType": "Patient", "identifier": [{"system": "urn:ietf:rfc:3986",
                                                     "value": "urn:uuid:F3B2BD36-199B-4591-B4DB-F49DB0912B62"}]},
         "not a valid lowercase urn:uuid"),
        ({"resourceType": "Patient", "maritalStatus": {"coding": [{"system": "local", "code": "M"}]}},
         "must be an absolute URI"),
        ({"resourceType": "SearchParameter", "url": "http://x.org/sp", "name": "c", "status": "active",
          "description": "d", "code": "c", "base": ["Patient"], "type": "composite"}, "two or more components"),
        ({"resourceType": "SearchParameter", "url": "http://x.org/sp", "name": "n", "status": "active",
          "description": "d", "code": "n", "base": ["Patient"], "type": "string",
          "derivedFrom": "http://hl7.org/fhir/SearchParameter/Organization-name"}, "base Patient"),
        ({"resourceType": "CodeSystem", "url": "http://x.org/cs", "status": "active", "content": "complete",
          "supplements": "http://loinc.org"}, "content 'supplement'"),
        ({"resourceType": "CodeSystem", "url": "http://x.org/cs", "status": "active", "content": "complete",
          "property": [{"code": "p", "type": "code"}, {"code": "p", "type": "boolean"}]}, "defined 2 times"),
    ],
)  # fmt: skip
def test_prose_rules(resource, said):
    found = errors(resource)
    assert any(said in text for text in found), found


def test_valid_bundles_and_our_published_guide_break_no_prose_rule():
    ok = bundle(
        "searchset",
        {"fullUrl": "https://x.org/fhir/Patient/1", "resource": {"resourceType": "Patient", "id": "1"},
         "search": {"mode": "match"}},
        {"resource": {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "processing"}]},
         "search": {"mode": "outcome"}},
        {"fullUrl": "urn:uuid:f3b2bd36-199b-4591-b4db-f49db0912b62", "resource": {"resourceType": "Patient", "id": "2"},
         "search": {"mode": "include"}},
        link=[{"relation": "self", "url": "https://x/a"}, {"relation": "next", "url": "https://x/b"}],
    )  # fmt: skip
    assert errors(ok) == []
    for name, resource in load_sources().items():
        assert errors(resource) == [], name


# --- the CLI ----------------------------------------------------------------------------------------------


def test_validate_a_folder_skips_what_is_no_resource_with_a_note(capsys):
    assert main(["validate", str(ROOT / "examples" / "invalid")]) == 1
    out = capsys.readouterr().out
    assert "manifest.json: note: not a FHIR resource (no resourceType), skipped" in out
    assert "manifest.json: error" not in out
    cases = len(json.loads((ROOT / "examples/invalid/manifest.json").read_text())["cases"])
    assert f"{cases} resource(s) checked" in out


def test_a_file_named_on_its_own_is_always_judged(tmp_path, capsys):
    path = tmp_path / "not-a-resource.json"
    path.write_text('{"name": "x"}')
    assert main(["validate", str(path)]) == 1
    assert "Missing resourceType" in capsys.readouterr().out


def test_the_request_examples_of_the_readme_are_valid_and_say_nothing_about_skipped_checks(tmp_path):
    narrated = tmp_path / "narrated.json"
    narrated.write_text(json.dumps(patient_with(f"<div {XHTML}><p>85073003328</p></div>")))
    done = subprocess.run(
        [sys.executable, "-m", "fhir_node", "validate", str(ROOT / "examples" / "requests"), str(narrated)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout
    assert "4 resource(s) checked, 0 error(s)" in done.stdout
    assert "skipped" not in done.stdout + done.stderr
    assert "htmlChecks" not in done.stdout + done.stderr
    readme = (ROOT / "README.md").read_text()
    for name in ("patient.json", "org.json", "episode.json"):
        assert f"@examples/requests/{name}" in readme

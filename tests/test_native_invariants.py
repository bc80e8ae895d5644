"""The invariants answered in Python (native_invariants.py) give fhirpathpy's answer, element by element,
on the resources validation really sees: the synth scenario, the official R4 examples, our examples
(valid and invalid), and mutations of them aimed at each native's edge (broken check digits, other
systems, pseudonymised values, local references, contained resources, missing narratives...)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_node.synth import Options, synth
from fhir_node.validation import validator
from fhir_node.validation.definitions import registry
from fhir_node.validation.invariants import Invariants
from fhir_node.validation.native_invariants import NATIVE
from fhir_node.validation.validator import validate

ROOT = Path(__file__).resolve().parents[1]
NS = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/"
PSEUDONYMISED = "https://www.ehealth.fgov.be/standards/fhir/infsec/StructureDefinition/be-ext-pseudonymization"
HTML_CHECKS = "htmlChecks()"  # narrative.py
ELE_1 = "hasValue() or (children().count() > id.count())"
Call = tuple[str, Any, Any, str, dict[str, Any], dict[str, Any]]


class Recording(Invariants):
    """Invariants that keep every native-answered call, to replay through fhirpathpy."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []

    def holds(self, expression: str, value: Any, twin: Any, type_path: str, resource: Any, root: Any) -> bool:
        if expression in NATIVE:
            self.calls.append((expression, value, twin, type_path, resource, root))
        return super().holds(expression, value, twin, type_path, resource, root)


def _files(folder: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(folder.rglob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        if isinstance(data, dict) and "resourceType" in data:
            entries = data.get("entry", []) if data["resourceType"] == "Bundle" else []
            yield from [e["resource"] for e in entries if "resource" in e] or [data]


def _identifiers(value: Any) -> Iterator[dict[str, Any]]:
    return (o for o in _objects(value) if isinstance(o.get("system"), str) and "value" in o)


def _mutations(resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Variants that move each native to its other answer, or to a shape it leaves to fhirpathpy."""
    for change in range(10):
        out = copy.deepcopy(resource)
        for ident in _identifiers(out):
            value = str(ident["value"])
            if change == 0 and value[-1:].isdigit():
                ident["value"] = value[:-1] + str((int(value[-1]) + 1) % 10)  # broken check digits
            elif change == 1:
                ident["system"] = ident["system"].upper()  # `~` ignores case
            elif change == 2:
                ident["value"] = value[:4] + "9" + value[5:]  # day or month out of range, or check digits
            elif change == 3:
                ident["extension"] = [{"url": PSEUDONYMISED, "valueString": "x"}]
            elif change == 4:
                del ident["value"]
                ident["_value"] = {"extension": [{"url": PSEUDONYMISED, "valueString": "x"}]}
            elif change == 5:
                del ident["system"]
                ident["value"] = value + "\n"
        if change == 6:
            out["contained"] = [{"resourceType": "Organization", "id": "org1", "name": "x"}]
            for key in ("patient", "subject", "organization", "managingOrganization"):
                if isinstance(out.get(key), dict):
                    out[key] = {"reference": "#org1" if key != "patient" else "#nobody"}
        if change == 7:
            out.pop("text", None)
            if isinstance(out.get("outcome"), str):
                out["outcome"] = "4"
            for entity in out.get("entity", []):
                entity["name"], entity["query"] = "n", "cXVlcnk="
        if change == 8 and resource["resourceType"] == "Consent":
            codes = ("patient-privacy", "research", "treatment", "adr")
            out["scope"] = {"coding": [{"system": "something", "code": c} for c in codes]}
            out["scope"]["coding"].append(
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            )
            out.pop("patient", None)
        if change == 9:  # ext-1, per-1, bihr-billing-1, ppc-1 broken
            for node in list(_objects(out)):
                if "url" in node and any(k.startswith("value") for k in node) and "extension" not in node:
                    node["extension"] = [{"url": "part", "valueString": "x"}]
                if isinstance(node.get("start"), str) and isinstance(node.get("end"), str):
                    node["start"], node["end"] = node["end"], node["start"]
                elif isinstance(node.get("start"), str) and node["start"].endswith("-01"):
                    node["start"] = node["start"][:-1] + "2"
            out.pop("policy", None)
            out.pop("policyRule", None)
        yield out


def _objects(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from _objects(v)
    elif isinstance(value, list):
        for v in value:
            yield from _objects(v)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("synth")
    synth(Options(4, 7, out, "resources"))
    ours = [*_files(out), *_files(ROOT / "examples" / "invalid"), *_files(ROOT / "examples" / "requests")]
    return ours + [m for r in ours for m in _mutations(r)] + list(_files(ROOT / "tests" / "fixtures" / "r4-examples"))


def test_natives_give_fhirpathpys_answers(corpus: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    recording = Recording()
    monkeypatch.setattr(validator, "_invariants", lambda: recording)
    for resource in corpus:
        validate(resource, required=True)
    reference = Invariants(natives={})  # fhirpathpy alone
    answered: dict[str, set[bool]] = {}
    for expression, value, twin, type_path, resource, root in recording.calls:
        native = NATIVE[expression](value, twin, root)
        if native is None or expression == HTML_CHECKS or (expression == ELE_1 and value is None):
            continue  # fhirpathpy lacks htmlChecks(); ele-1 holds for a primitive with only extensions (HL7)
        expected = reference.holds(expression, value, twin, type_path, resource, root)
        assert native == expected, (expression, value, twin)
        answered.setdefault(expression, set()).add(native)
    assert set(answered) == set(NATIVE) - {HTML_CHECKS}, "a native was never exercised"
    confirming = ("contained.", ELE_1, HTML_CHECKS)  # these answer True or leave it to fhirpathpy
    never_false = [e for e in NATIVE if not e.startswith(confirming) and False not in answered.get(e, ())]
    assert not never_false, f"natives never shown failing: {never_false}"


@pytest.mark.parametrize(
    ("system", "value", "expected"),
    [
        ("ssin", "85073003328", True),
        ("ssin", "17073003384", True),
        ("ssin", "98472899765", True),
        ("ssin", "85073003329", False),
        ("ssin", "85133003370", False),  # month 13, right check digits
        ("ssin", "85333003316", False),  # month 33
        ("ssin", "85073203365", False),  # day 32
        ("ssin", "85413003372", True),  # BIS, month + 40
        ("ssin", "85203003322", True),  # BIS, month + 20, month itself unknown
        ("ssin", "8507300332", False),
        ("ssin", "850730033280", False),
        ("ssin", "85.07.30-033.28", False),
        ("SSIN", "85073003329", False),
        ("ssin", None, False),
        ("other", "x", True),
        ("cbe", "0203201340", True),
        ("cbe", "0203201341", False),
        ("cbe", "2203201340", False),
        ("nihdi-organization", "10006935", True),
        ("nihdi", "10006935001", True),
        ("nihdi", "10006936001", False),
        ("nihdi-organization", "1000693", False),
        ("nihdi-professional", "1000693500", False),
    ],
)
def test_check_digit_natives_on_identifiers(system: str, value: str | None, expected: bool) -> None:
    """Each check-digit invariant on one Identifier, native and fhirpathpy side by side."""
    reference = Invariants(natives={})
    ident: dict[str, Any] = {"system": NS + system} if system != "SSIN" else {"system": (NS + "ssin").upper()}
    if value is not None:
        ident["value"] = value
    patient = {"resourceType": "Patient", "identifier": [ident]}
    checked = [e for e in NATIVE if e.startswith("iif(") and f"/{system.lower()}'" in e]
    for expression in [e for e in NATIVE if e.startswith("iif(")]:
        native = NATIVE[expression](ident, None, patient)
        assert native == reference.holds(expression, ident, None, "Identifier", patient, patient)
        assert native == (expected if expression in checked else True), expression


def test_every_native_expression_is_one_the_definitions_use() -> None:
    """A native keyed by a text no definition holds any more would be dead code, silently."""
    definitions = registry()
    used = {
        c.expression
        for url in definitions._raw
        if (d := definitions.get(url)) is not None
        for e in d.by_id.values()
        for c in e.constraints
    }
    assert set(NATIVE) <= used

"""Index extraction skips the FHIRPath engine for the expression shapes it can follow itself (plain paths and
choice elements, `where(resolve() is T)`, `where(system='email')`, `as dateTime`, `repeat(provision)`,
`exists() and != false`, extensions by URL and their values): on the resources a node really indexes (the
synth scenario, our examples, the official R4 examples, and a few shaped to reach every branch), each such
evaluator gives the engine's answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fhirpathpy
import pytest

from fhir_node.registry import KINDS
from fhir_node.search.fhirpath import _OPTIONS, compile_expression
from fhir_node.search.registry import registry
from fhir_node.synth import Options, synth

ROOT = Path(__file__).resolve().parents[1]
ENGINE_ONLY = "_engine.<locals>.<lambda>"


def _resources(folder: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(folder.rglob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        if isinstance(data, dict) and isinstance(data.get("resourceType"), str):
            entries = data.get("entry", []) if data["resourceType"] == "Bundle" else []
            yield from [e["resource"] for e in entries if isinstance(e, dict) and "resource" in e] or [data]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("synth")
    synth(Options(20, 3, out, "resources"))
    folders = (out, ROOT / "examples", ROOT / "tests" / "fixtures" / "r4-examples")
    return [r for folder in folders for r in _resources(folder) if r["resourceType"] in KINDS] + SHAPED


def _provision(code: str, *nested: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {"purpose": [{"system": "http://example.org/purpose", "code": code}]}
    return {**found, "provision": list(nested)} if nested else found


#: Resources that reach what the files may not: nested provisions (level by level), several telecoms,
#: each form of `deceased`.
SHAPED: list[dict[str, Any]] = [
    {
        "resourceType": "Consent",
        "sourceReference": {"reference": "DocumentReference/d-1"},
        "provision": _provision(
            "a", _provision("b", _provision("d"), _provision("e")), _provision("c", _provision("f"))
        ),
    },
    {"resourceType": "Consent", "sourceAttachment": {"url": "http://example.org/consent.pdf"}},
    {
        "resourceType": "Patient",
        "deceasedDateTime": "2020-01-02",
        "telecom": [{"system": "email", "value": "a@example.org"}, {"system": "phone", "value": "1"}],
    },
    {"resourceType": "Patient", "deceasedBoolean": False, "telecom": [{"system": "phone", "value": "2"}]},
    {"resourceType": "Patient", "deceasedBoolean": True},
    {"resourceType": "Patient"},
]


def test_fast_evaluators_give_the_engines_answers(corpus: list[dict[str, Any]]) -> None:
    compared: dict[str, int] = {}
    for resource in corpus:
        for param in registry().of(resource["resourceType"]).values():
            evaluate = compile_expression(param.expression)
            if not param.expression or evaluate.__qualname__ == ENGINE_ONLY:
                continue
            engine = fhirpathpy.compile(param.expression, fhirpathpy.models.models["r4"], _OPTIONS)
            assert evaluate(resource) == engine(resource, None), (param.expression, resource.get("id"))
            if evaluate(resource):
                compared[param.expression] = compared.get(param.expression, 0) + 1
    followed = [e for e in compared if ".extension('" in e and e.endswith(".value")]
    assert len(followed) >= 2, compared  # billing-period and recorder, found without the engine
    for shape in (
        "Patient.telecom.where(system='email')",
        "(Patient.deceased as dateTime)",
        "Patient.deceased.exists() and Patient.deceased != false",
        "Consent.source",
        "Consent.provision.purpose | Consent.provision.repeat(provision).purpose",
    ):
        assert compared.get(shape, 0) >= 1, (shape, compared)  # compared with the engine on a real answer

"""The check-digit invariants of the published profiles, evaluated as a validator would: with fhirpathpy,
on identifiers inside a resource, the expression taken from the profiles themselves."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import fhirpathpy
import pytest
from fhirpathpy.models import models

PROFILES = Path(__file__).resolve().parents[1] / "profiles"
NS = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/"
SSIN, CBE, NIHDI = NS + "ssin", NS + "cbe", NS + "nihdi"
PSEUDONYMISED = "https://www.ehealth.fgov.be/standards/fhir/infsec/StructureDefinition/be-ext-pseudonymization"


@cache
def constraints() -> dict[str, set[str]]:
    """Every invariant our profiles declare, by key, with the expressions found under that key."""
    found: dict[str, set[str]] = {}
    for path in PROFILES.glob("StructureDefinition-*.json"):
        for element in json.loads(path.read_text())["differential"]["element"]:
            for constraint in element.get("constraint", ()):
                found.setdefault(constraint["key"], set()).add(constraint["expression"])
    return found


def holds(key: str, identifier: dict[str, Any]) -> bool:
    """Whether the invariant holds for one Identifier of a Patient (its context in the profiles)."""
    (expression,) = constraints()[key]
    patient = {"resourceType": "Patient", "identifier": [identifier]}
    result = fhirpathpy.evaluate(patient, f"Patient.identifier.all({expression})", None, models["r4"])
    assert result in ([True], [False]), result
    return result == [True]


def test_each_invariant_has_one_expression_wherever_it_is_used() -> None:
    assert {"bihr-ssin", "bihr-cbe", "bihr-nihdi"} <= constraints().keys()
    assert all(len(expressions) == 1 for expressions in constraints().values())


def test_no_integer_literal_overflows_32_bits() -> None:
    """FHIRPath integers are 32-bit: large numbers must go through toDecimal(), never appear as literals."""
    for expressions in constraints().values():
        for expression in expressions:
            literals = re.findall(r"(?<![\w.{,'])\d+(?![\w}])", re.sub(r"'[^']*'", "''", expression))
            assert all(int(n) < 2**31 for n in literals), expression


@pytest.mark.parametrize(
    "value",
    [
        "85073003328",  # 1985
        "17073003384",  # 2017: check digits computed on 2 + the 9 digits
        "98472899765",  # BIS, month + 40
        "01490700185",  # BIS, 2001
        "98522899703",  # BIS, month 52 (12 + 40)
    ],
)
def test_valid_ssin(value: str) -> None:
    assert holds("bihr-ssin", {"system": SSIN, "value": value})


@pytest.mark.parametrize(
    "value",
    [
        "85073003329",  # check digits off by one
        "01490700186",  # BIS 2001, wrong check digits under both rules
        "8507300332",  # 10 digits
        "850730033280",  # 12 digits
        "85.07.30-033.28",  # punctuation
        "8507300332A",
        "85133003370",  # month 13, check digits right
        "85333003316",  # month 33: neither a month nor a BIS month, check digits right
        "85073203365",  # day 32, check digits right
        "",
    ],
)
def test_invalid_ssin(value: str) -> None:
    assert not holds("bihr-ssin", {"system": SSIN, "value": value})


def test_ssin_without_value_fails() -> None:
    assert not holds("bihr-ssin", {"system": SSIN})


@pytest.mark.parametrize("value", ["0566988259", "0403170701", "1882927178"])
def test_valid_cbe(value: str) -> None:
    assert holds("bihr-cbe", {"system": CBE, "value": value})


@pytest.mark.parametrize("value", ["0566988258", "2566988204", "056698825", "05669882590", "0566.988.259"])
def test_invalid_cbe(value: str) -> None:
    assert not holds("bihr-cbe", {"system": CBE, "value": value})


@pytest.mark.parametrize(
    ("system", "value"),
    [
        (NIHDI, "10829059004"),  # 97 - (108290 mod 97) = 59
        (NIHDI, "10829023004"),  # 89 - (108290 mod 89) = 23
        (NIHDI, "40001216001"),
        (NIHDI, "40001243001"),
        (NS + "nihdi-professional", "10829059004"),
        (NS + "nihdi-organization", "71000436"),  # an organisation: 8 digits, no qualification
        (NIHDI, "10829059"),  # be-core's deprecated short form of a care provider's number
    ],
)
def test_valid_nihdi(system: str, value: str) -> None:
    assert holds("bihr-nihdi", {"system": system, "value": value})


@pytest.mark.parametrize(
    ("system", "value"),
    [
        (NIHDI, "10829060004"),  # neither rule
        (NIHDI, "1082905900"),  # neither 8 nor 11 digits
        (NIHDI, "108290590040"),
        (NIHDI, "1082-9059-004"),
        (NS + "nihdi-professional", "10829024004"),
        (NS + "nihdi-organization", "71000437"),
    ],
)
def test_invalid_nihdi(system: str, value: str) -> None:
    assert not holds("bihr-nihdi", {"system": system, "value": value})


@pytest.mark.parametrize(("key", "system"), [("bihr-ssin", SSIN), ("bihr-cbe", CBE), ("bihr-nihdi", NIHDI)])
def test_pseudonymised_values_are_exempt(key: str, system: str) -> None:
    marker = {"extension": [{"url": PSEUDONYMISED, "extension": [{"url": "transitInfo", "valueString": "t"}]}]}
    pseudonym = "eyJhbGciOiJFUzI1NiJ9.c2Vjb25kLXBhcnQ"
    assert holds(key, {"system": system, "value": pseudonym, "_value": marker})
    assert holds(key, {"system": system, "value": pseudonym, **marker})  # on the Identifier itself
    assert not holds(key, {"system": system, "value": pseudonym})


def test_another_extension_on_the_value_does_not_exempt_it() -> None:
    other = {"extension": [{"url": "urn:example:note", "valueString": "x"}]}
    assert holds("bihr-ssin", {"system": SSIN, "value": "85073003328", "_value": other})
    assert not holds("bihr-ssin", {"system": SSIN, "value": "85073003329", "_value": other})


@pytest.mark.parametrize("key", ["bihr-ssin", "bihr-cbe", "bihr-nihdi"])
def test_other_systems_are_not_checked(key: str) -> None:
    assert holds(key, {"system": "urn:example:local", "value": "12"})
    assert holds(key, {"value": "12"})


def test_invariants_run_where_the_profiles_put_them() -> None:
    """bihr-ssin on a reference's identifier (EpisodeOfCare.patient), in the element's own context."""
    (expression,) = constraints()["bihr-ssin"]
    episode = {"resourceType": "EpisodeOfCare", "patient": {"identifier": {"system": SSIN, "value": "85073003329"}}}
    assert fhirpathpy.evaluate(episode, f"EpisodeOfCare.patient.identifier.all({expression})", None, models["r4"]) == [
        False
    ]
    episode["patient"]["identifier"]["value"] = "85073003328"
    assert fhirpathpy.evaluate(episode, f"EpisodeOfCare.patient.identifier.all({expression})", None, models["r4"]) == [
        True
    ]

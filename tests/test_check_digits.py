"""Check digits of SSIN, CBE and NIHDI numbers: known values, typical mistakes, and generation round-trips."""

from __future__ import annotations

import datetime
import random

import pytest

from fhir_node.rules.check_digits import (
    cbe,
    cbe_error,
    nihdi_error,
    nihdi_organisation,
    nihdi_professional,
    ssin,
    ssin_error,
)


@pytest.mark.parametrize(
    "value",
    [
        "85073003328",  # born 1985
        "17073003384",  # born 2017: check digits on 2 + the 9 digits
        "98472899765",  # BIS, month 07 + 40
        "01490700185",  # BIS, born 2001
        "85000000138",  # birth month and day unknown (00)
    ],
)
def test_valid_ssins(value: str) -> None:
    assert ssin_error(value) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("85073003329", "check digits"),
        ("17073003383", "check digits"),
        ("8507300332", "11 digits"),
        ("850730033280", "11 digits"),
        ("85.07.30-033.28", "digits"),
        ("8507300332a", "digits"),
        ("\uff18\uff15073003328", "digits"),  # full-width digits: digits to str.isdigit, not to us
        (85073003328, "string"),
        ("85133000105", "month"),  # month 13, and 13 - 20 is no month either
        ("85023100192", "birth date"),  # 31 February
    ],
)
def test_invalid_ssins(value: object, reason: str) -> None:
    problem = ssin_error(value)
    assert problem is not None and reason in problem


def test_ssin_mistyped_digit_is_caught() -> None:
    """A single wrong digit changes the mod-97 remainder, so every one-digit typo is refused."""
    good = "85073003328"
    for i in range(9):
        for d in "0123456789":
            if d != good[i]:
                typo = good[:i] + d + good[i + 1 :]
                assert ssin_error(typo) is not None, typo


@pytest.mark.parametrize("value", ["0403170701", "0202239951", "1000000120"])
def test_valid_cbe_numbers(value: str) -> None:
    assert cbe_error(value) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [("0403170702", "check digits"), ("2403170701", "start with 0 or 1"), ("040317070", "10 digits"), ("", "digits")],
)
def test_invalid_cbe_numbers(value: str, reason: str) -> None:
    problem = cbe_error(value)
    assert problem is not None and reason in problem


@pytest.mark.parametrize(
    "value",
    [
        "10185748004",  # physician, modulo-89 series
        "56534271701",  # physiotherapist, modulo-97 series
        "41234502401",
        "71012314",  # 8-digit organisation number
    ],
)
def test_valid_nihdi_numbers(value: str) -> None:
    assert nihdi_error(value) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [("10185749004", "check digits"), ("1018574800", "8 or 11 digits"), ("1-01857-48-004", "digits")],
)
def test_invalid_nihdi_numbers(value: str, reason: str) -> None:
    problem = nihdi_error(value)
    assert problem is not None and reason in problem


def test_generated_numbers_validate() -> None:
    """Thousands of random generated numbers all pass, and each with a changed check digit fails."""
    rng = random.Random(97)
    start = datetime.date(1920, 1, 1).toordinal()
    for _ in range(5000):
        birth = datetime.date.fromordinal(rng.randint(start, datetime.date(2024, 12, 31).toordinal()))
        value = ssin(birth, rng.randint(1, 998), rng.choice((0, 0, 20, 40)))
        assert ssin_error(value) is None, value
        assert ssin_error(value[:9] + f"{(int(value[9:]) + 1) % 100:02d}") is not None
        number = cbe(rng.randint(1, 19_999_999))
        assert cbe_error(number) is None, number
        assert cbe_error(number[:8] + f"{(int(number[8:]) + 1) % 100:02d}") is not None
        professional = nihdi_professional(rng.randint(1, 9), rng.randint(0, 99_999), rng.randint(0, 999))
        assert nihdi_error(professional) is None, professional
        organisation = nihdi_organisation(rng.randint(1, 9), rng.randint(0, 99_999))
        assert nihdi_error(organisation) is None, organisation


def test_generation_refuses_out_of_range_parts() -> None:
    with pytest.raises(ValueError):
        ssin(datetime.date(1985, 7, 30), 0)
    with pytest.raises(ValueError):
        ssin(datetime.date(1985, 7, 30), 33, bis=30)
    with pytest.raises(ValueError):
        cbe(20_000_000)
    with pytest.raises(ValueError):
        nihdi_professional(0, 1, 1)

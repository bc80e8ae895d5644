"""Check digits of the Belgian identifiers the node stores, validated and generated.

Real check digits let the node refuse a mistyped number at the door; be-core only checks lengths.
Every `*_error` answers None for a valid value, else the reason (for an OperationOutcome). The
generators build numbers that pass those checks, for synthetic data and tests.

- SSIN (NISS, national register or BIS number): `YYMMDD SSS CC`, CC = 97 - (YYMMDDSSS mod 97); for
  births from 2000 the modulus is taken of `2YYMMDDSSS`. A BIS number adds 20 (sex unknown) or 40
  (sex known) to the month. Month and day may be 00 when the birth date is not known.
- CBE/KBO enterprise number: 10 digits starting 0 or 1, last two = 97 - (first 8 mod 97).
- NIHDI (INAMI/RIZIV) number of a care provider: 11 digits, profession digit + 5-digit sequence +
  2 check digits + 3-digit qualification. The check digits cover the first 6: 97 - (n mod 97) for the
  numbers issued before 2013; NIHDI then added a modulo-89 series (nurses and midwives from 2013,
  physicians from 1 April 2019), which we read as 89 - (n mod 89). That reading rests on one real
  physician number and secondary sources, not on the NIHDI circular itself, so both are accepted and
  only mod-97 numbers are generated.
- NIHDI number of an organisation (PSI, pharmacy, hospital): assumed to be the same first 8 digits
  (category digit + 5-digit sequence + 2 check digits, same rule) without the qualification.
"""

from __future__ import annotations

import datetime

SSIN_LENGTH = 11
CBE_LENGTH = 10
NIHDI_PROFESSIONAL_LENGTH = 11
NIHDI_ORGANISATION_LENGTH = 8
_BIS_OFFSETS = (0, 20, 40)


def _mod97_check(n: int) -> int:
    return 97 - n % 97


def _mod89_check(n: int) -> int:
    return 89 - n % 89


def _digits_error(value: object, lengths: tuple[int, ...], name: str) -> str | None:
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        return f"{name} must be a string of digits, without separators"
    if len(value) not in lengths:
        expected = " or ".join(str(n) for n in lengths)
        return f"{name} must have {expected} digits, not {len(value)}"
    return None


def ssin_error(value: object) -> str | None:
    """Why `value` is no valid SSIN (national register or BIS number), or None when it is one."""
    problem = _digits_error(value, (SSIN_LENGTH,), "An SSIN")
    if problem:
        return problem
    assert isinstance(value, str)
    body, check = int(value[:9]), int(value[9:])
    centuries = [c for c, n in ((1900, body), (2000, 2_000_000_000 + body)) if _mod97_check(n) == check]
    if not centuries:
        return f"SSIN {value} has wrong check digits {value[9:]}"
    yy, mm, dd = int(value[:2]), int(value[2:4]), int(value[4:6])
    month = next((mm - o for o in _BIS_OFFSETS if 0 <= mm - o <= 12), None)
    if month is None:
        return f"SSIN {value}: month {value[2:4]} is neither a month nor a BIS month (+20, +40)"
    if month == 0 or dd == 0:  # birth date (partly) unknown: allowed as such
        return None if dd <= 31 else f"SSIN {value}: day {value[4:6]} does not exist"
    for century in centuries:
        try:
            datetime.date(century + yy, month, dd)
        except ValueError:
            continue
        return None
    return f"SSIN {value}: {value[:6]} is not a birth date"


def ssin(birth: datetime.date, serial: int, bis: int = 0) -> str:
    """A valid SSIN for a birth date and a daily serial (1-998); `bis` 20 or 40 makes a BIS number."""
    if bis not in _BIS_OFFSETS:
        raise ValueError(f"bis must be one of {_BIS_OFFSETS}")
    if not 1 <= serial <= 998:
        raise ValueError("serial must be 1-998")
    body = f"{birth.year % 100:02d}{birth.month + bis:02d}{birth.day:02d}{serial:03d}"
    n = int(body) + (2_000_000_000 if birth.year >= 2000 else 0)
    return f"{body}{_mod97_check(n):02d}"


def cbe_error(value: object) -> str | None:
    """Why `value` is no valid CBE/KBO enterprise number, or None when it is one."""
    problem = _digits_error(value, (CBE_LENGTH,), "A CBE number")
    if problem:
        return problem
    assert isinstance(value, str)
    if value[0] not in "01":
        return f"CBE number {value} must start with 0 or 1"
    if _mod97_check(int(value[:8])) != int(value[8:]):
        return f"CBE number {value} has wrong check digits {value[8:]}"
    return None


def cbe(body: int) -> str:
    """A valid CBE number whose first 8 digits are `body` (0 to 19,999,999)."""
    if not 0 < body < 20_000_000:
        raise ValueError("a CBE number's first 8 digits run from 00000001 to 19999999")
    return f"{body:08d}{_mod97_check(body):02d}"


def nihdi_error(value: object) -> str | None:
    """Why `value` is no valid NIHDI number (11-digit care provider or 8-digit organisation), or None."""
    problem = _digits_error(value, (NIHDI_ORGANISATION_LENGTH, NIHDI_PROFESSIONAL_LENGTH), "A NIHDI number")
    if problem:
        return problem
    assert isinstance(value, str)
    first6, check = int(value[:6]), int(value[6:8])
    if check not in (_mod97_check(first6), _mod89_check(first6)):
        return f"NIHDI number {value} has wrong check digits {value[6:8]}"
    return None


def nihdi_professional(profession: int, sequence: int, qualification: int) -> str:
    """A valid care-provider NIHDI number (mod-97 series): profession 1-9, sequence < 100000, qualification < 1000."""
    if not (1 <= profession <= 9 and 0 <= sequence < 100_000 and 0 <= qualification < 1000):
        raise ValueError("profession 1-9, sequence 0-99999, qualification 0-999")
    return f"{nihdi_organisation(profession, sequence)}{qualification:03d}"


def nihdi_organisation(category: int, sequence: int) -> str:
    """A valid 8-digit organisation NIHDI number (mod-97 series): category digit 1-9, sequence < 100000."""
    if not (1 <= category <= 9 and 0 <= sequence < 100_000):
        raise ValueError("category 1-9, sequence 0-99999")
    first6 = category * 100_000 + sequence
    return f"{first6:06d}{_mod97_check(first6):02d}"

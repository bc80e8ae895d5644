"""SNOMED CT identifiers, as far as they can be judged without SNOMED CT itself.

An SCTID (SNOMED CT Technical Implementation Guide, 6.1) is 6 to 18 digits without a leading zero: an
item identifier, a partition identifier (two digits: `00`/`10` for a concept, short or long form) and a
Verhoeff check digit. A code that breaks this is unknown to every SNOMED CT edition: HL7's validator,
asking its terminology server, reports it as an unknown code. Whether a well-formed identifier names a
real concept needs the terminology itself, which the node does not carry.
"""

from __future__ import annotations

import re

SNOMED = "http://snomed.info/sct"
_DIGITS = re.compile(r"[1-9][0-9]{5,17}")
_CONCEPT_PARTITIONS = frozenset({"00", "10"})

# Verhoeff's dihedral group D5: multiplication, and the permutation applied per position.
_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)


def verhoeff_valid(digits: str) -> bool:
    """Whether a digit string ends in its correct Verhoeff check digit."""
    check = 0
    for i, digit in enumerate(reversed(digits)):
        check = _D[check][_P[i % 8][int(digit)]]
    return check == 0


def concept_id_problem(code: str) -> str | None:
    """Why `code` cannot be a SNOMED CT concept identifier, or None when it can."""
    if not _DIGITS.fullmatch(code):
        return f"'{code}' is not a SNOMED CT concept identifier (6 to 18 digits, no leading zero)"
    if code[-3:-1] not in _CONCEPT_PARTITIONS:
        return f"'{code}' is not a SNOMED CT concept identifier (its partition {code[-3:-1]} is not a concept's)"
    if not verhoeff_valid(code):
        return f"'{code}' is not a valid SNOMED CT identifier (wrong check digit)"
    return None

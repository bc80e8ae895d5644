"""Date search: every prefix over periods with open ends, partial dates and zone offsets, against the oracle
(R4 3.1.1.4.2: a value is the range of instants it covers, compared with the range of the search value)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from search_data import (
    MAX,
    MIN,
    PREFIXES,
    Loaded,
    Oracle,
    all_match_ids,
    assert_search,
    date_matches,
    fhir_range,
)

#: Search values of every precision, some with offsets that move them across a day or a year in UTC.
EPISODE_VALUES = [
    "2023",
    "2022",
    "2023-05",
    "2023-05-17",
    "2023-12-31",
    "2024-01-01",
    "2024-01-01T00:00:00Z",
    "2024-01-01T00:30:00+02:00",
    "2023-12-31T22:30:00Z",
    "2022-03-15T12:00:00+01:00",
    "2023-03-01T04:00:00Z",
]
CONSENT_VALUES = ["2023", "2023-06-15", "2023-06-15T08:00:00Z", "2024-02-29", "2022-12-01", "2022-11-30"]
BIRTH_VALUES = ["1980", "1975-06", "1990-02-14", "1990"]
AUDIT_VALUES = ["2024-03-01", "2024-03-02T00:00:00+01:00", "2024-03-03T10:00:00-05:00"]
EXACT_PREFIXES = [p for p in PREFIXES if p != "ap"]

MATRIX = (
    [("EpisodeOfCare", "date", v) for v in EPISODE_VALUES]
    + [("Consent", "date", v) for v in CONSENT_VALUES]
    + [("Consent", "period", v) for v in ["2024", "2025-06"]]
    + [("Patient", "birthdate", v) for v in BIRTH_VALUES]
    + [("AuditEvent", "date", v) for v in AUDIT_VALUES]
)


@pytest.mark.parametrize("prefix", EXACT_PREFIXES)
@pytest.mark.parametrize(("res_type", "code", "value"), MATRIX, ids=str)
def test_date_prefix(searched: Loaded, res_type: str, code: str, value: str, prefix: str) -> None:
    assert_search(searched, res_type, f"{code}={prefix}{value}", discriminating=False)


def test_the_matrix_discriminates(searched: Loaded) -> None:
    """Most prefix/value pairs above select some but not all resources, so agreeing with the oracle means something."""
    oracle = searched.oracle
    sizes = [
        (len(oracle.ids(t, f"{c}={p}{v}")), len(searched.dataset.ids(t))) for t, c, v in MATRIX for p in EXACT_PREFIXES
    ]
    assert sum(0 < n < total for n, total in sizes) > 0.6 * len(sizes)


@pytest.mark.parametrize(("res_type", "code", "value"), MATRIX, ids=str)
def test_approximately(searched: Loaded, res_type: str, code: str, value: str) -> None:
    """`ap`: R4 recommends 10% of the gap to now; the node may round, so it must find everything within 98%
    of that margin and nothing beyond 102%."""
    got = {i for _, i in all_match_ids(searched.client, res_type, f"{code}=ap{value}")}
    surely = Oracle(searched.dataset, ap_factor=0.98).ids(res_type, f"{code}=ap{value}")
    at_most = Oracle(searched.dataset, ap_factor=1.02).ids(res_type, f"{code}=ap{value}")
    assert surely <= got <= at_most, f"missing {sorted(surely - got)}, unexpected {sorted(got - at_most)}"


COMBINED = [
    ("EpisodeOfCare", "date=ge2023&date=lt2024"),
    ("EpisodeOfCare", "date=lt2022,gt2024"),
    ("EpisodeOfCare", "date=sa2023-06-30&status=active,finished"),
    ("EpisodeOfCare", "date:missing=true"),
    ("EpisodeOfCare", "date:missing=false"),
    ("Consent", "date=ge2023-06-15T10:00:00+02:00"),
    ("Consent", "date:missing=true"),
    ("Consent", "period=lt2023-06-01"),
    ("Patient", "death-date=2023-08-14"),
    ("Patient", "birthdate=lt1980&birthdate=ge1960"),
]


@pytest.mark.parametrize(("res_type", "params"), COMBINED, ids=str)
def test_date_combinations(searched: Loaded, res_type: str, params: str) -> None:
    assert_search(searched, res_type, params)


def test_zone_offsets_move_values_across_the_year(searched: Loaded) -> None:
    """2024-01-01T00:30:00+02:00 is 2023-12-31T22:30Z: it starts before 2024 in UTC."""
    before_2024 = assert_search(searched, "EpisodeOfCare", "date=lt2024-01-01")
    assert {"eoc-03", "eoc-04"} <= before_2024
    assert "eoc-04" in assert_search(searched, "EpisodeOfCare", "date=eq2023-12-31")


def _middle(searched: Loaded, res_type: str) -> str:
    stamps = sorted(r["meta"]["lastUpdated"] for r in searched.dataset.of(res_type))
    return stamps[len(stamps) // 2]


@pytest.mark.parametrize("prefix", EXACT_PREFIXES)
def test_last_updated(searched: Loaded, prefix: str) -> None:
    """_lastUpdated against the instants the server gave on write (microsecond precision)."""
    assert_search(searched, "EpisodeOfCare", f"_lastUpdated={prefix}{_middle(searched, 'EpisodeOfCare')}", False)


def test_last_updated_range(searched: Loaded) -> None:
    stamps = sorted(r["meta"]["lastUpdated"] for r in searched.dataset.of("Consent"))
    assert_search(searched, "Consent", f"_lastUpdated=ge{stamps[5]}&_lastUpdated=lt{stamps[20]}")


def test_last_updated_at_second_precision(searched: Loaded) -> None:
    """A search value to the second covers that whole second."""
    second = _middle(searched, "Patient")[:19] + "Z"
    assert_search(searched, "Patient", f"_lastUpdated=eq{second}", discriminating=False)
    assert_search(searched, "Patient", f"_lastUpdated=ge{second}", discriminating=False)


# The oracle's own reading of the spec, checked on hand-worked cases.

DAY = timedelta(days=1)


def test_oracle_ranges() -> None:
    assert fhir_range("2023") == (datetime(2023, 1, 1), datetime(2023, 12, 31, 23, 59, 59, 999999))
    assert fhir_range("2024-02") == (datetime(2024, 2, 1), datetime(2024, 2, 29, 23, 59, 59, 999999))
    assert fhir_range("2023-12") == (datetime(2023, 12, 1), datetime(2023, 12, 31, 23, 59, 59, 999999))
    assert fhir_range("2024-01-01T00:30:00+02:00") == (
        datetime(2023, 12, 31, 22, 30),
        datetime(2023, 12, 31, 22, 30, 0, 999999),
    )
    assert fhir_range("2024-03-01T10:00:00.25Z") == (
        datetime(2024, 3, 1, 10, 0, 0, 250000),
        datetime(2024, 3, 1, 10, 0, 0, 259999),
    )
    assert fhir_range("2024-13-01") is None
    assert fhir_range("yesterday") is None


def test_oracle_prefixes() -> None:
    year = fhir_range("2023")
    assert year is not None
    open_from_may = (datetime(2023, 5, 1), MAX)
    inside = (datetime(2023, 3, 1), datetime(2023, 4, 1))
    before = (MIN, datetime(2022, 6, 30))
    assert date_matches("eq", year, inside) and not date_matches("eq", year, open_from_may)
    assert date_matches("ne", year, open_from_may) and not date_matches("ne", year, inside)
    assert date_matches("gt", year, open_from_may) and not date_matches("gt", year, inside)
    assert date_matches("lt", year, before) and not date_matches("lt", year, open_from_may)
    assert date_matches("ge", year, inside) and date_matches("ge", year, open_from_may)
    assert date_matches("le", year, inside) and not date_matches("le", year, open_from_may)
    assert date_matches("sa", year, (datetime(2024, 1, 1), MAX)) and not date_matches("sa", year, open_from_may)
    assert date_matches("eb", year, before) and not date_matches("eb", year, (MIN, datetime(2023, 1, 1)))
    assert date_matches("ap", year, (datetime(2024, 1, 2), datetime(2024, 1, 3)))
    assert not date_matches("ap", year, (datetime(2030, 1, 1), MAX))

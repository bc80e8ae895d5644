"""Small-cell suppression of the aggregator's counts: below FHIR_NODE_SMALL_CELL_MIN (5) a count is
withheld (Bundle.total absent, `_total` masked), at or above it shown; other roles always get counts.
The world (tests/access_data.py) gives the aggregator 4 inclusions, 2 consents and 2 patients."""

from __future__ import annotations

import pytest
from access_data import World, search
from starlette.testclient import TestClient

from fhir_node.rules.small_cells import DATA_ABSENT_REASON, bundle_total, suppressed

MASKED = {"_total": {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "masked"}]}}


@pytest.mark.parametrize(("count", "minimum", "hidden"), [(0, 5, True), (4, 5, True), (5, 5, False), (0, 0, False)])
def test_counts_below_the_minimum_are_suppressed(count: int, minimum: int, hidden: bool) -> None:
    assert suppressed(count, minimum) is hidden
    assert bundle_total(count, minimum) == (MASKED if hidden else {"total": count})


def test_no_minimum_or_no_count_leaves_the_total_as_it_is() -> None:
    assert bundle_total(3, None) == {"total": 3}
    assert bundle_total(None, 5) == {}


@pytest.mark.parametrize(
    "query",
    [
        "EpisodeOfCare?_summary=count",
        "EpisodeOfCare?_total=accurate&_count=1",
        "EpisodeOfCare",
        "Patient?_total=estimate",
    ],
)
def test_the_aggregators_small_counts_are_masked_wherever_a_total_appears(
    world: tuple[TestClient, World], query: str
) -> None:
    client, _ = world
    found = search(client, "aggregator", query)
    assert "total" not in found
    assert found["_total"] == MASKED["_total"]
    assert search(client, "operator", query)["total"] >= 2


def test_counts_at_or_above_the_minimum_are_shown(world: tuple[TestClient, World]) -> None:
    client, _ = world
    found = search(client, "aggregator", "?_type=EpisodeOfCare,Consent,Patient&_summary=count")
    assert found["total"] == 8 and "_total" not in found

"""Paging: _count, next and previous links that together give every match once, in order, even while
resources are created, updated and deleted between page fetches."""

from __future__ import annotations

import copy

import pytest
from search_data import (
    BASE,
    Dataset,
    Loaded,
    Oracle,
    link,
    load,
    match_ids,
    pages,
    query,
    search,
    write,
)
from starlette.testclient import TestClient

PAGED = [
    ("EpisodeOfCare", "_count=7"),
    ("EpisodeOfCare", "status:not=cancelled&_count=4&_sort=-date"),
    ("EpisodeOfCare", "_count=9&_sort=status,date"),
    ("Patient", "_count=3&_sort=family"),
    ("Consent", "_count=5&_sort=date,status"),
    ("AuditEvent", "_count=6&_sort=-date"),
    ("AuditEvent", "_count=1"),
    ("Patient", "_count=4&_sort=-_lastUpdated"),
    ("Patient", "_count=3&_sort=gender,-birthdate"),  # a key some patients lack
    ("EpisodeOfCare", "_count=8&_sort=-care-manager,type"),
]


def _count(params: str) -> int:
    return int(dict(query(params))["_count"])


def _order(oracle: Oracle, res_type: str, params: str) -> list[str]:
    return oracle.order(res_type, oracle.ids(res_type, params), dict(query(params)).get("_sort", "_id"))


@pytest.mark.parametrize(("res_type", "params"), PAGED, ids=str)
def test_next_links_cover_the_result_once_in_order(searched: Loaded, res_type: str, params: str) -> None:
    forward = list(pages(searched.client, search(searched.client, res_type, params)))
    sizes = [len(match_ids(p)) for p in forward]
    assert len(forward) > 1, "one page only: a weak test"
    assert all(n == _count(params) for n in sizes[:-1]) and 0 < sizes[-1] <= _count(params)
    assert [i for p in forward for i in match_ids(p)] == _order(searched.oracle, res_type, params)
    assert link(forward[0], "previous") is None and link(forward[-1], "next") is None


@pytest.mark.parametrize(("res_type", "params"), PAGED, ids=str)
def test_previous_links_walk_back_through_the_same_pages(searched: Loaded, res_type: str, params: str) -> None:
    forward = list(pages(searched.client, search(searched.client, res_type, params)))
    backward = list(pages(searched.client, forward[-1], "previous"))
    assert [match_ids(p) for p in reversed(backward)] == [match_ids(p) for p in forward]


def test_self_link_gives_the_same_page(searched: Loaded) -> None:
    first = search(searched.client, "EpisodeOfCare", "_count=5&_sort=date")
    second = searched.client.get(link(first, "next") or "").json()
    for page in (first, second):
        url = link(page, "self")
        assert url is not None and url.startswith(f"{BASE}/EpisodeOfCare?")
        assert match_ids(searched.client.get(url).json()) == match_ids(page)


def test_a_cursor_not_issued_for_the_search_is_refused(searched: Loaded) -> None:
    first = search(searched.client, "EpisodeOfCare", "_count=5&_sort=date")
    cursor = dict(query((link(first, "next") or "").split("?", 1)[1]))["_cursor"]
    for params in [f"_count=5&_sort=status,date&_cursor={cursor}", "_cursor=not-a-cursor"]:
        r = searched.client.get("/fhir/EpisodeOfCare", params=query(params))
        assert r.status_code == 400 and "_cursor" in r.json()["issue"][0]["expression"]


def _episode(n: int, status: str, start: str) -> dict:
    return {
        "resourceType": "EpisodeOfCare",
        "id": f"new-{n:02d}",
        "status": status,
        "patient": {"reference": "Patient/pat-01"},
        "period": {"start": start},
    }


@pytest.mark.parametrize("sort", ["", "&_sort=date", "&_sort=-date,status"])
def test_writes_between_pages_neither_skip_nor_repeat(client: TestClient, sort: str) -> None:
    """Between every two page fetches: create matching episodes (sorting before and after the cursor),
    update some (not in what they are sorted or filtered by) and delete some. Every episode that matched
    before and was never deleted is seen exactly once; nothing is seen after its deletion."""
    dataset: Dataset = load(client)
    params = f"status=active,finished,onhold,planned&_count=6{sort}"
    before = Oracle(dataset).ids("EpisodeOfCare", params)
    untouched_order = sorted(before)
    deleted: set[str] = set()
    seen: list[str] = []
    page = search(client, "EpisodeOfCare", params)
    step = 0
    while True:
        ids = match_ids(page)
        assert not set(ids) & deleted, f"deleted episodes served: {sorted(set(ids) & deleted)}"
        seen += ids
        url = link(page, "next")
        if url is None:
            break
        step += 1
        dataset.keep(write(client, _episode(2 * step, "active", "2019-01-01")))
        dataset.keep(write(client, _episode(2 * step + 1, "finished", "2030-06-01")))
        unseen = [i for i in untouched_order if i not in seen and i not in deleted]
        for res_id in [*seen[-1:], *unseen[:2]]:
            changed = copy.deepcopy(dataset.get("EpisodeOfCare", res_id))
            assert changed is not None
            changed["identifier"] = [{"system": "https://example.org/fhir/touched", "value": str(step)}]
            dataset.keep(write(client, changed))
        for res_id in [*seen[:1], *unseen[2:3]]:
            if res_id not in deleted:
                assert client.delete(f"/fhir/EpisodeOfCare/{res_id}").status_code in (200, 204)
                deleted.add(res_id)
        page = client.get(url).json()
    assert len(seen) == len(set(seen)), "an episode was served twice"
    assert step >= 3, "too few pages for the writes to matter"
    missing = before - deleted - set(seen)
    assert not missing, f"skipped: {sorted(missing)}"

"""Searches of one query shape share a ready statement (fhir_node/search/plans.py): each still gets the
answer for its own values, pages through its own matches, and sees only what its caller may see."""

from __future__ import annotations

from typing import Any

import pytest
from access_data import ISSUER, P1, P3, SSIN, World, headers
from access_data import search as search_as
from starlette.testclient import TestClient

from fhir_node.search import plans

PROGRAMME = "https://example.org/programme"
OTHER = "https://example.org/other-programme"


def _post(client: TestClient, body: dict[str, Any]) -> str:
    r = client.post(f"/fhir/{body['resourceType']}", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _episode(patient: str, start: str, system: str, code: str) -> dict[str, Any]:
    return {
        "resourceType": "EpisodeOfCare",
        "status": "active",
        "type": [{"coding": [{"system": system, "code": code}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "period": {"start": start, "end": start},
    }


def _ids(client: TestClient, query: str) -> set[str]:
    """Every match of a search, following its next links."""
    r = client.get(f"/fhir/EpisodeOfCare?{query}")
    assert r.status_code == 200, r.text
    found, bundle = set(), r.json()
    while True:
        found |= {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}
        following = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        if following is None:
            return found
        bundle = client.get(following).json()


@pytest.fixture
def episodes(client: TestClient) -> dict[str, str]:
    """Two patients' episodes: A's start in 2024 (programme code `x` and another system's `y`), B's in 2025
    (programme code `y`, and `x` of the other system)."""
    a = _post(client, {"resourceType": "Patient"})
    b = _post(client, {"resourceType": "Patient"})
    return {
        "a": a,
        "b": b,
        "A1": _post(client, _episode(a, "2024-03-01", PROGRAMME, "x")),
        "A2": _post(client, _episode(a, "2024-06-01", OTHER, "y")),
        "B1": _post(client, _episode(b, "2025-03-01", PROGRAMME, "y")),
        "B2": _post(client, _episode(b, "2025-06-01", OTHER, "x")),
    }


def test_one_shape_answers_each_value_on_its_own(client: TestClient, episodes: dict[str, str]) -> None:
    e = episodes
    cases = [
        (f"patient=Patient/{e['a']}", {"A1", "A2"}),
        (f"patient=Patient/{e['b']}", {"B1", "B2"}),
        (f"patient={e['a']}", {"A1", "A2"}),
        (f"patient={e['b']}", {"B1", "B2"}),
        ("date=ge2024-01-01", {"A1", "A2", "B1", "B2"}),
        ("date=ge2025-01-01", {"B1", "B2"}),
        ("date=lt2024-05", {"A1"}),
        ("date=lt2025-05", {"A1", "A2", "B1"}),
        ("type=x", {"A1", "B2"}),
        ("type=y", {"A2", "B1"}),
        (f"type={PROGRAMME}|x", {"A1"}),
        (f"type={OTHER}|x", {"B2"}),
        (f"type={OTHER}|", {"A2", "B2"}),
        (f"type={PROGRAMME}|", {"A1", "B1"}),
        ("type=|x", set()),
        (f"type=x&patient=Patient/{e['a']}", {"A1"}),
        (f"type=x&patient=Patient/{e['b']}", {"B2"}),
        (f"type=x,y&patient=Patient/{e['b']}&date=ge2025-04-01", {"B2"}),
        (f"_id={e['A2']}", {"A2"}),
        (f"_id={e['B1']}", {"B1"}),
        (f"_id={e['A1']},{e['B2']}", {"A1", "B2"}),
    ]
    for query, expected in cases * 2:  # the second round finds every shape's statement ready
        for count in ("", "&_count=1"):  # one page, and pages of one that follow next links
            assert _ids(client, query + count) == {e[name] for name in expected}, query + count


def test_a_shape_is_built_once_and_bound_to_each_searchs_values(client: TestClient, episodes: dict[str, str]) -> None:
    e = episodes
    assert _ids(client, f"patient=Patient/{e['a']}&date=ge2024-05-01") == {e["A2"]}
    before = plans.built()
    assert _ids(client, f"patient=Patient/{e['b']}&date=ge2025-05-01") == {e["B2"]}
    assert _ids(client, f"patient=Patient/{e['a']}&date=ge2023-01-01") == {e["A1"], e["A2"]}
    assert plans.built() == before  # one shape: the statement built for the first search
    assert _ids(client, f"patient=Patient/{e['b']}&date=le2025-05-01&_count=7") == {e["B1"]}
    assert _ids(client, f"patient=Patient/{e['b']}&date=le2025-05-01&_count=7") == {e["B1"]}
    assert plans.built() <= before + 1  # another prefix: another shape, built once (unless seen before)


def test_previous_links_of_a_ready_statement_go_back_over_the_same_matches(
    client: TestClient, episodes: dict[str, str]
) -> None:
    for patient in ("a", "b"):
        first = client.get(f"/fhir/EpisodeOfCare?patient=Patient/{episodes[patient]}&_count=1").json()
        following = next(link["url"] for link in first["link"] if link["relation"] == "next")
        second = client.get(following).json()
        back = next(link["url"] for link in second["link"] if link["relation"] == "previous")
        again = client.get(back).json()
        assert [x["resource"]["id"] for x in again["entry"]] == [x["resource"]["id"] for x in first["entry"]]
        assert second["entry"][0]["resource"]["id"] != first["entry"][0]["resource"]["id"]


def test_a_ready_statement_never_widens_what_a_restricted_role_sees(world: tuple[TestClient, World]) -> None:
    """The operator's search makes the shape's statement; roles whose access policy adds a condition
    (the aggregator's, shared by every aggregator, has a statement of its own) then search the same shape
    and still see only their part (see test_access_matrix for the parts)."""
    client, w = world
    seen = {
        ("operator", "P1"): {"A1", "B1"},
        ("psi-admin", "P1"): {"A1"},
        ("operator", "P2"): {"B2"},
        ("aggregator", "P1"): {"A1", "B1"},
        ("aggregator", "P2"): set(),  # P2 refused research use
        ("aggregator", "P3"): {"A3", "B3"},
        ("patient", "P2"): set(),  # the patient is P1
        ("patient", "P1"): {"A1", "B1"},
        ("provider", "P1"): {"A1", "B1"},
        ("stranger", "P1"): set(),  # a provider too, without a relationship to P1
        ("psi-admin", "P3"): {"A3", "B3"},
        ("operator", "P3"): {"A3", "B3"},
    }
    by_id = {v: k for k, v in w.ids.items()}
    for _ in range(2):
        for (caller, patient), expected in seen.items():
            found = search_as(client, caller, f"EpisodeOfCare?patient={w.ref(patient)}")
            assert {by_id[e["resource"]["id"]] for e in found.get("entry", [])} == expected, (caller, patient)


def test_ssin_searches_of_one_shape_find_each_their_patient(world: tuple[TestClient, World]) -> None:
    """An SSIN rests pseudonymised: each search of the shape binds its own value's pseudonyms."""
    client, w = world
    for ssin, name in ((P1, "P1"), (P3, "P3"), (P1, "P1")):
        r = client.get(f"/fhir/Patient?identifier={SSIN}|{ssin}", headers=headers("operator"))
        assert [e["resource"]["id"] for e in r.json()["entry"]] == [w.ids[name]]


def test_a_query_repeated_is_parsed_and_shaped_once(
    client: TestClient, episodes: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same query string again reuses its criteria and their forms; another one is shaped for itself."""
    e = episodes
    shaped: list[str] = []
    forms = plans.forms

    def counted(c: Any, prefix: str, base: str) -> Any:
        shaped.append(c.name)
        return forms(c, prefix, base)

    monkeypatch.setattr(plans, "forms", counted)
    query = f"patient=Patient/{e['a']}&date=ge2024-05-01&_count=3"
    for _ in range(3):
        assert _ids(client, query) == {e["A2"]}
    assert shaped == ["patient", "date"]
    assert _ids(client, f"patient=Patient/{e['b']}&date=ge2024-05-01&_count=3") == {e["B1"], e["B2"]}
    assert shaped == ["patient", "date"] * 2


def test_an_ssin_query_is_shaped_for_each_caller(world: tuple[TestClient, World]) -> None:
    """The pseudonyms an SSIN is looked for as depend on who asks: the same query string (one aggregator's
    pseudonym of P1), asked in turn by that aggregator and another (with the same reach, so the same shape
    key), answers each as if asked alone: P1 for the first, nothing for the other."""
    client, w = world
    central = headers("aggregator")
    other = {"Authorization": f"Bearer {ISSUER.token('other-index', 'aggregator', 'system/*.rs')}"}
    pseudonym = client.get(f"/fhir/Patient/{w.ids['P1']}", headers=central).json()["identifier"][0]["value"]
    query = f"/fhir/Patient?identifier={SSIN}|{pseudonym}"
    for asking, expected in ((central, [w.ids["P1"]]), (other, []), (central, [w.ids["P1"]])):
        r = client.get(query, headers=asking)
        assert r.status_code == 200, r.text
        assert [e["resource"]["id"] for e in r.json().get("entry", [])] == expected

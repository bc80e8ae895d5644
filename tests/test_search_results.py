"""What a search returns besides the filter: _include/_revinclude, _sort, _total, _summary, _elements,
POST _search, system-level search, and strict versus lenient handling of what the node cannot honour."""

from __future__ import annotations

from typing import Any

import pytest
from search_data import (
    BASE,
    FHIR_JSON,
    SSIN,
    Loaded,
    all_match_ids,
    assert_search,
    entries,
    generate,
    link,
    match_ids,
    pages,
    query,
    search,
    typed_ids,
)

DATA = generate()
ALL_TYPES = tuple(DATA)
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
ALWAYS = {"resourceType", "id", "meta"}
#: R4 top-level elements with min >= 1 (kept by _elements and _summary=text).
MANDATORY = {"EpisodeOfCare": {"status", "patient"}, "Consent": {"status", "scope", "category"}, "Patient": set()}
#: R4 elements flagged isSummary (Σ), top level.
SUMMARY = {
    "EpisodeOfCare": {"implicitRules", "status", "type", "diagnosis", "patient", "managingOrganization", "period"},
    "Patient": {
        "implicitRules", "identifier", "active", "name", "telecom", "gender", "birthDate", "deceasedBoolean",
        "deceasedDateTime", "address", "managingOrganization", "link",
    },
}  # fmt: skip


def _stored(env: Loaded, entry: dict[str, Any]) -> dict[str, Any]:
    resource = entry["resource"]
    stored = env.dataset.get(resource["resourceType"], resource["id"])
    assert stored is not None, resource["id"]
    return stored


# _include and _revinclude --------------------------------------------------------------------------

INCLUDES = [
    ("EpisodeOfCare", "status=active&_include=EpisodeOfCare:patient"),
    ("EpisodeOfCare", "status=active&_include=EpisodeOfCare:patient&_include:iterate=Patient:organization"),
    ("EpisodeOfCare", "status=onhold&_include=EpisodeOfCare:*"),
    ("EpisodeOfCare", "status=finished&_include=*"),
    ("EpisodeOfCare", "type=psi-copd&_include=EpisodeOfCare:care-manager:Practitioner"),
    ("Patient", "_id=pat-01,pat-05&_revinclude=Consent:patient"),
    ("Patient", "gender=female&_revinclude=EpisodeOfCare:patient&_include:iterate=EpisodeOfCare:organization"),
    ("Organization", "_id=org-0&_revinclude:iterate=Organization:partof"),
    ("Organization", "_id=org-0,org-1&_revinclude=Organization:partof"),  # org-1 is a match, not an include
    ("Consent", "status=proposed&_include=Consent:data&_include=Consent:consentor"),
    ("Practitioner", "_id=prac-1&_revinclude=EpisodeOfCare:care-manager"),
    ("AuditEvent", "action=C,E&_include=AuditEvent:entity"),
]


def _specs(params: str) -> list[tuple[str, str]]:
    return [(n, v) for n, v in query(params) if n.startswith(("_include", "_revinclude"))]


@pytest.mark.parametrize(("res_type", "params"), INCLUDES, ids=str)
def test_include(searched: Loaded, res_type: str, params: str) -> None:
    bundle = search(searched.client, res_type, params + "&_count=1000")
    matches = {(res_type, i) for i in searched.oracle.ids(res_type, params)}
    included = searched.oracle.includes(matches, _specs(params))
    assert set(typed_ids(bundle)) == matches
    assert set(typed_ids(bundle, "include")) == included
    assert included, "the include adds nothing: a weak test"
    every = [(e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"]]
    assert len(every) == len(set(every)), "an entry appears twice"
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert entry["fullUrl"] == f"{BASE}/{resource['resourceType']}/{resource['id']}"
        assert resource == _stored(searched, entry)


def test_include_per_page(searched: Loaded) -> None:
    """Each page includes what its own matches refer to."""
    params = "_include=EpisodeOfCare:patient&_include=EpisodeOfCare:organization&_count=7"
    for page in pages(searched.client, search(searched.client, "EpisodeOfCare", params)):
        matches = set(typed_ids(page))
        assert set(typed_ids(page, "include")) == searched.oracle.includes(matches, _specs(params))


def test_include_iterate_reaches_further_than_include(searched: Loaded) -> None:
    plain = "status=active&_include=EpisodeOfCare:patient&_include=Patient:organization"
    iterate = "status=active&_include=EpisodeOfCare:patient&_include:iterate=Patient:organization"
    without = set(typed_ids(search(searched.client, "EpisodeOfCare", plain), "include"))
    with_iterate = set(typed_ids(search(searched.client, "EpisodeOfCare", iterate), "include"))
    assert {t for t, _ in without} == {"Patient"}
    assert {t for t, _ in with_iterate} == {"Patient", "Organization"}


# _sort -----------------------------------------------------------------------------------------------

SORTS = [
    ("EpisodeOfCare", "_sort=date"),
    ("EpisodeOfCare", "_sort=-date"),
    ("EpisodeOfCare", "_sort=status,-date"),
    ("EpisodeOfCare", "_sort=patient,_id"),
    ("EpisodeOfCare", "_sort=type"),
    ("EpisodeOfCare", "_sort=-_lastUpdated"),
    ("EpisodeOfCare", "_sort=-_id"),
    ("EpisodeOfCare", "_sort=care-manager,-identifier"),
    ("EpisodeOfCare", "status=active,finished&_sort=-date"),
    ("Patient", "_sort=family,given"),
    ("Patient", "_sort=-birthdate"),
    ("Patient", "_sort=name"),
    ("Patient", "_sort=gender,-birthdate"),
    ("Consent", "_sort=date,status"),
    ("Consent", "_sort=-date"),
    ("Consent", "_sort=-period,_lastUpdated"),
    ("AuditEvent", "_sort=-date"),
    ("Organization", "_sort=name"),
    ("Practitioner", "_sort=-family"),
]


@pytest.mark.parametrize(("res_type", "params"), SORTS, ids=str)
def test_sort(searched: Loaded, res_type: str, params: str) -> None:
    """The full order across pages is the oracle's: each key up or down, missing values last, then by id."""
    got = [i for _, i in all_match_ids(searched.client, res_type, params + "&_count=7")]
    sort = dict(query(params))["_sort"]
    assert got == searched.oracle.order(res_type, searched.oracle.ids(res_type, params), sort)


# _total ----------------------------------------------------------------------------------------------

ACTIVE_ISH = "status=active,finished,cancelled"


@pytest.mark.parametrize("mode", ["accurate", "estimate"])
def test_total_counted(searched: Loaded, mode: str) -> None:
    expected = len(searched.oracle.ids("EpisodeOfCare", ACTIVE_ISH))
    first = search(searched.client, "EpisodeOfCare", f"{ACTIVE_ISH}&_count=3&_total={mode}")
    assert expected > 3 and link(first, "next")
    assert all(page.get("total") == expected for page in pages(searched.client, first))


def test_total_none_leaves_it_out(searched: Loaded) -> None:
    bundle = search(searched.client, "EpisodeOfCare", f"{ACTIVE_ISH}&_count=3&_total=none")
    assert "total" not in bundle and len(match_ids(bundle)) == 3


def test_total_of_a_single_page(searched: Loaded) -> None:
    bundle = search(searched.client, "Patient", "gender=female")
    assert bundle["total"] == len(searched.oracle.ids("Patient", "gender=female"))


# _summary and _elements ----------------------------------------------------------------------------


def _tags(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return resource.get("meta", {}).get("tag", [])


def _check_subset(env: Loaded, bundle: dict[str, Any], keep: Any) -> None:
    """Every match holds exactly the stored elements `keep(stored)` names, and is tagged SUBSETTED."""
    for entry in entries(bundle):
        stored = _stored(env, entry)
        resource = entry["resource"]
        assert set(resource) == {k for k in stored if k in ALWAYS or keep(stored, k)}
        assert {k: resource[k] for k in resource if k != "meta"} == {k: stored[k] for k in resource if k != "meta"}
        assert _tags(resource) == [*_tags(stored), SUBSETTED]


@pytest.mark.parametrize("res_type", ["EpisodeOfCare", "Patient"])
def test_summary_true(searched: Loaded, res_type: str) -> None:
    bundle = search(searched.client, res_type, "_summary=true&_count=1000")
    assert set(match_ids(bundle)) == searched.dataset.ids(res_type)
    _check_subset(searched, bundle, lambda _s, k: k in SUMMARY[res_type])


def test_summary_text(searched: Loaded) -> None:
    bundle = search(searched.client, "EpisodeOfCare", "status=active,finished&_summary=text")
    assert set(match_ids(bundle)) == searched.oracle.ids("EpisodeOfCare", "status=active,finished")
    _check_subset(searched, bundle, lambda _s, k: k == "text" or k in MANDATORY["EpisodeOfCare"])
    assert any("text" in e["resource"] for e in entries(bundle)), "no narrative in these: a weak test"


def test_summary_data(searched: Loaded) -> None:
    bundle = search(searched.client, "Patient", "_summary=data")
    _check_subset(searched, bundle, lambda _s, k: k != "text")
    assert any("text" in _stored(searched, e) for e in entries(bundle)), "no narrative to drop: a weak test"


def test_summary_false_is_the_whole_resource(searched: Loaded) -> None:
    bundle = search(searched.client, "Patient", "_summary=false")
    assert all(e["resource"] == _stored(searched, e) for e in entries(bundle))


def test_summary_count(searched: Loaded) -> None:
    bundle = search(searched.client, "EpisodeOfCare", "status=active&_summary=count")
    assert bundle["total"] == len(searched.oracle.ids("EpisodeOfCare", "status=active"))
    assert "entry" not in bundle


COUNTED = [
    ("EpisodeOfCare", "status=active"),
    ("EpisodeOfCare", "status=active,finished&date=ge2024-01-01T00:30:00+02:00"),  # a walk and a probe
    ("EpisodeOfCare", "patient=Patient/pat-01&status=active"),
    ("EpisodeOfCare", "patient.name=dup"),  # a chain: no walk
    ("Patient", f"identifier={SSIN}|{DATA['Patient'][3]['identifier'][0]['value']}&gender=female,male"),
    ("Patient", "_id=pat-01,pat-05,nobody"),
    ("Consent", "scope=research&status:not=active"),
    ("Organization", "_has:Patient:organization:gender=female"),
]


@pytest.mark.parametrize(("res_type", "params"), COUNTED, ids=str)
@pytest.mark.parametrize("shape", ["_summary=count", "_total=accurate&_count=1", "_total=estimate&_count=1"])
def test_counts_are_exact(searched: Loaded, res_type: str, params: str, shape: str) -> None:
    """However the node counts (over the walked index or the resources), the total is the matches'."""
    bundle = search(searched.client, res_type, f"{params}&{shape}")
    assert bundle["total"] == len(searched.oracle.ids(res_type, params))


def test_count_zero_counts_only(searched: Loaded) -> None:
    bundle = search(searched.client, "Consent", "scope=research&_count=0")
    assert bundle["total"] == len(searched.oracle.ids("Consent", "scope=research")) and "entry" not in bundle


@pytest.mark.parametrize(
    ("res_type", "params", "asked"),
    [
        ("EpisodeOfCare", "status=active&_elements=status,period", {"status", "period"}),
        ("EpisodeOfCare", "_elements=identifier&_elements=careManager", {"identifier", "careManager"}),
        ("Patient", "_elements=name,birthDate", {"name", "birthDate"}),
        ("Consent", "status=active&_elements=dateTime", {"dateTime"}),
        ("Patient", "_elements=deceased,gender", {"deceasedBoolean", "deceasedDateTime", "gender"}),  # a choice
        ("Consent", "_elements=source", {"sourceReference"}),
        ("Consent", "_elements=policy", {"policy"}),  # not policyRule
    ],
    ids=str,
)
def test_elements(searched: Loaded, res_type: str, params: str, asked: set[str]) -> None:
    """The asked elements, plus the mandatory ones R4 says a server should keep, tagged SUBSETTED."""
    bundle = search(searched.client, res_type, params + "&_count=1000")
    assert set(match_ids(bundle)) == searched.oracle.ids(res_type, params)
    _check_subset(searched, bundle, lambda _s, k: k in asked or k in MANDATORY[res_type])


# POST _search and system-level search --------------------------------------------------------------

POSTED = [
    ("EpisodeOfCare", "status=active,finished&date=ge2024-01-01T00:30:00+02:00"),
    ("Patient", f"identifier={SSIN}|{DATA['Patient'][3]['identifier'][0]['value']}"),
    ("Patient", "name=lefè&_sort=-birthdate"),
    ("Consent", "_has:Consent:source-reference:status=draft,active,proposed,rejected,inactive"),
    ("EpisodeOfCare", "patient.name=dup&_include=EpisodeOfCare:patient&_count=2"),
]


@pytest.mark.parametrize(("res_type", "params"), POSTED, ids=str)
def test_post_search_equals_get(searched: Loaded, res_type: str, params: str) -> None:
    posted = searched.client.post(
        f"/fhir/{res_type}/_search", data=dict(query(params)), headers={"Accept": "application/fhir+json"}
    )
    assert posted.status_code == 200, posted.text
    got, gotten = posted.json(), search(searched.client, res_type, params)
    assert typed_ids(got) == typed_ids(gotten) and typed_ids(got, "include") == typed_ids(gotten, "include")
    assert set(typed_ids(got)) <= {(res_type, i) for i in searched.oracle.ids(res_type, params)}
    union = [i for page in pages(searched.client, got) for _, i in typed_ids(page)]
    assert set(union) == searched.oracle.ids(res_type, params) and len(union) == len(set(union))


def test_post_search_joins_url_and_body(searched: Loaded) -> None:
    r = searched.client.post("/fhir/EpisodeOfCare/_search?status=active", data={"type": "psi-copd"})
    assert r.status_code == 200, r.text
    assert set(match_ids(r.json())) == assert_search(searched, "EpisodeOfCare", "status=active&type=psi-copd", False)


def test_post_search_takes_a_form_only(searched: Loaded) -> None:
    r = searched.client.post("/fhir/Patient/_search", content=b'{"gender": "female"}', headers=FHIR_JSON)
    assert r.status_code == 415 and r.json()["resourceType"] == "OperationOutcome"


SYSTEM = [
    "_type=Patient,Organization&_id=pat-01,org-1,prac-1",
    "_tag=import-2023",
    "_type=Patient,Practitioner&family=martin,dupont",
    "_type=Patient,Organization&name=d,re",
    "_security=R&_type=EpisodeOfCare,Consent,AuditEvent",
    "_profile:below=https://example.org/fhir/StructureDefinition/psi",
]


@pytest.mark.parametrize("params", SYSTEM)
def test_system_search(searched: Loaded, params: str) -> None:
    named = dict(query(params)).get("_type")
    types = named.split(",") if named else ALL_TYPES
    got = all_match_ids(searched.client, None, params)
    expected = searched.oracle.typed(types, params)
    assert sorted(got) == sorted(expected) and len(got) == len(set(got))
    assert expected and len({t for t, _ in expected}) > 1, "one type only: a weak test"


# Strictness ------------------------------------------------------------------------------------------

BAD = [
    ("Patient", "foo=bar", "foo"),
    ("Patient", "name=", "name"),
    ("Patient", "name:foo=x", "name:foo"),
    ("Patient", "birthdate=2024-13-45", "birthdate"),
    ("Patient", "birthdate=notadate", "birthdate"),
    ("EpisodeOfCare", "date=xx2024", "date"),
    ("EpisodeOfCare", "status:contains=act", "status:contains"),
    ("EpisodeOfCare", "status:exact=active", "status:exact"),  # not a token modifier
    ("EpisodeOfCare", "type:below=psi-diabetes", "type:below"),  # subsumption needs a terminology server
    ("EpisodeOfCare", "type:above=psi-diabetes", "type:above"),
    ("EpisodeOfCare", "_profile:contains=psi", "_profile:contains"),
    ("EpisodeOfCare", "patient=Organization/org-1", "patient"),  # not a target of the parameter
    ("EpisodeOfCare", "patient:Organization=org-1", "patient:Organization"),
    ("EpisodeOfCare", "patient:Organization.name=chu", "patient:Organization.name"),
    ("EpisodeOfCare", "patient.foo=bar", "patient.foo"),
    ("Patient", "identifier:of-type=a|b", "identifier:of-type"),
    ("Patient", "active:missing=maybe", "active:missing"),
    ("Patient", "_has:Foo:patient:status=x", "_has:Foo:patient:status"),
    ("EpisodeOfCare", "_count=abc", "_count"),
    ("EpisodeOfCare", "_sort=foo", "_sort"),
    ("EpisodeOfCare", "_summary=maybe", "_summary"),
    ("EpisodeOfCare", "_total=bogus", "_total"),
    ("EpisodeOfCare", "_include=EpisodeOfCare:foo", "_include"),
    (None, "gender=female", "gender"),  # not a parameter of every type
]


@pytest.mark.parametrize(("res_type", "params", "name"), BAD, ids=str)
def test_strict_refuses(searched: Loaded, res_type: str | None, params: str, name: str) -> None:
    r = searched.client.get(f"/fhir/{res_type}" if res_type else "/fhir", params=query(params))
    assert r.status_code == 400, r.text[:300]
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert any(name in issue.get("expression", []) for issue in outcome["issue"]), outcome


LENIENT = [
    ("Patient", "foo=bar&gender=female", "foo"),
    ("Patient", "name:foo=x&gender=female", "name:foo"),
    ("Patient", "birthdate=2024-13-45&gender=female", "birthdate"),
    ("EpisodeOfCare", "date=xx2024&status=active", "date"),
    ("EpisodeOfCare", "_sort=foo&status=active", "_sort"),
]


@pytest.mark.parametrize(("res_type", "params", "name"), LENIENT, ids=str)
def test_lenient_ignores_and_says_so(searched: Loaded, res_type: str, params: str, name: str) -> None:
    r = searched.client.get(f"/fhir/{res_type}", params=query(params), headers={"Prefer": "handling=lenient"})
    assert r.status_code == 200, r.text[:300]
    bundle = r.json()
    kept = [(n, v) for n, v in query(params) if n != name]
    assert set(match_ids(bundle)) == searched.oracle.ids(res_type, kept)
    outcomes = entries(bundle, "outcome")
    assert len(outcomes) == 1 and outcomes[0]["resource"]["resourceType"] == "OperationOutcome"
    issues = outcomes[0]["resource"]["issue"]
    assert any(name in i.get("expression", []) and i["severity"] in ("warning", "information") for i in issues)

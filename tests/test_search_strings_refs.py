"""String, reference and uri search against the oracle."""

from __future__ import annotations

import pytest
from search_data import (
    BASE,
    NIHDI,
    PROFILE_ROOT,
    SSIN,
    Loaded,
    Ref,
    assert_search,
    fold,
    generate,
    reference_matches,
    string_matches,
    uri_matches,
)

DATA = generate()
PAT3_SSIN = DATA["Patient"][3]["identifier"][0]["value"]
PAT5_SSIN = DATA["Patient"][5]["identifier"][0]["value"]
#: The NIHDI number of the practitioner an AuditEvent names by identifier only.
AGENT_NIHDI = next(
    a["agent"][0]["who"]["identifier"]["value"] for a in DATA["AuditEvent"] if "identifier" in a["agent"][0]["who"]
)

STRINGS = {
    "Patient": [
        "name=dup",
        "name=LEFE",  # Lefèvre: case and accents ignored
        "name=zoe",
        "name=Lejeune",  # a second, maiden HumanName
        "name=omer celik",  # HumanName.text
        "family=van den",
        "family=de smet",
        "family=celik,noel",
        "given=elise",
        "given=jean",
        "given=sophie",
        "name:exact=Lefèvre",
        "family:exact=DE SMET",
        "name:contains=EVR",
        "name:contains=SMET",
        "name:contains=ll",
        "address=rue",
        "address=liege",
        "address-city=liege",
        "address-country=FR",
        "address-postalcode=404",
        "address-state=wall",
        "mothersMaidenName=lemaitre",
        "name=dup,lef&gender=female",
    ],
    "Organization": [
        "name=reseau",
        "name=RSB",  # an alias
        "name=brussels",
        "name=chu,apotheek",
        "name:exact=Soins à domicile\\, Liège",  # an escaped comma is part of the value
        "name:contains=domicile",
        "name:contains=GENT",
        "address-city=namur",
    ],
    "Practitioner": ["name=dr", "given=eve", "family=martin", "name:exact=Ève", "address-state=bxl"],
    "AuditEvent": ["agent-name=eve", "agent-name:exact=Portail Patient", "entity-name=dossier d", "address=10.0.1"],
}
STRING_MISSES = [
    ("Patient", "name:exact=lefèvre"),  # :exact keeps case
    ("Patient", "name:exact=Lefevre"),  # and accents
    ("Patient", "name=efevre"),  # the default matches from the start only
    ("Organization", "name:exact=Soins à domicile"),
    ("Patient", "family=Van_den"),  # _ and % are no wildcards
    ("Patient", "name:contains=%"),
    ("Organization", "name=Soins_"),
]

REFERENCES = {
    "EpisodeOfCare": [
        "patient=Patient/pat-03",
        "patient=pat-03",
        f"patient={BASE}/Patient/pat-03",
        "patient:Patient=pat-03",
        "patient=Patient/pat-03,Patient/pat-04",
        f"patient:identifier={SSIN}|{PAT5_SSIN}",
        f"patient:identifier={PAT5_SSIN}",
        "care-manager=Practitioner/prac-1",
        "care-manager:missing=true",
        "care-manager:missing=false",
        "organization=org-2",
        "organization:missing=true",
        "condition=Condition/cond-1",
        "condition:missing=false",
        "incoming-referral=ServiceRequest/sr-13",
        "patient=pat-01,pat-02&status:not=cancelled",
    ],
    "Consent": [
        "patient=Patient/pat-05",
        "patient:missing=true",
        "consentor=Practitioner/prac-1",
        "consentor:Practitioner=prac-1",
        "consentor:Organization=org-2",
        "actor=Organization/org-2",
        "data=EpisodeOfCare/eoc-01",
        "source-reference:missing=false",
        "organization=Organization/org-3",
    ],
    "AuditEvent": [
        "patient=Patient/pat-02",
        "agent=Patient/pat-02",
        f"agent:identifier={NIHDI}|{AGENT_NIHDI}",
        "entity=https://other.example.org/fhir/Patient/ext-1",
        "patient=https://other.example.org/fhir/Patient/ext-1",  # a Patient, on another server
        "entity=EpisodeOfCare/eoc-03",
        "entity:Consent=consent-00",
        "source=Organization/org-1",
        "source:Practitioner=prac-0",
    ],
    "Patient": [
        "general-practitioner=Organization/org-2",
        "general-practitioner:Practitioner=prac-1",
        "link=Patient/pat-02",
        "organization:missing=true",
        "organization=org-1",
    ],
    "Organization": ["partof=org-0", "partof=Organization/org-0", "endpoint=Endpoint/ep-1"],
}

URIS = {
    "EpisodeOfCare": [
        f"_profile={PROFILE_ROOT}/episode-v2",
        f"_profile:below={PROFILE_ROOT}/",
        f"_profile:below={PROFILE_ROOT}/episode",  # a whole segment: not .../episode-v2
        f"_profile:above={PROFILE_ROOT}/episode/extra",
        "_source=https://example.org/source/registry-a",
        "_source:missing=true",
        "_profile:missing=false",
    ],
    "AuditEvent": [
        "policy=https://example.org/policy/research/psi",
        "policy:below=https://example.org/policy/research",
        "policy:above=https://example.org/policy/research/psi/2024",
        "policy:missing=true",
    ],
}


def _cases(table: dict[str, list[str]]) -> list[tuple[str, str]]:
    return [(t, q) for t, queries in table.items() for q in queries]


@pytest.mark.parametrize(("res_type", "params"), _cases(STRINGS), ids=str)
def test_string_search(searched: Loaded, res_type: str, params: str) -> None:
    assert_search(searched, res_type, params)


@pytest.mark.parametrize(("res_type", "params"), STRING_MISSES, ids=str)
def test_string_search_that_matches_nothing(searched: Loaded, res_type: str, params: str) -> None:
    assert assert_search(searched, res_type, params, discriminating=False) == set()


@pytest.mark.parametrize(("res_type", "params"), _cases(REFERENCES), ids=str)
def test_reference_search(searched: Loaded, res_type: str, params: str) -> None:
    assert_search(searched, res_type, params)


@pytest.mark.parametrize(("res_type", "params"), _cases(URIS), ids=str)
def test_uri_search(searched: Loaded, res_type: str, params: str) -> None:
    assert_search(searched, res_type, params)


def test_reference_forms_agree(searched: Loaded) -> None:
    """Type/id, a bare id, the absolute URL under our base and the :Type modifier find the same episodes."""
    forms = ["Patient/pat-03", "pat-03", f"{BASE}/Patient/pat-03"]
    found = [assert_search(searched, "EpisodeOfCare", f"patient={f}") for f in forms]
    found.append(assert_search(searched, "EpisodeOfCare", "patient:Patient=pat-03"))
    assert all(f == found[0] for f in found)


def test_care_manager_only_indexes_practitioners(searched: Loaded) -> None:
    """care-manager is `careManager.where(resolve() is Practitioner)`: a PractitionerRole manager counts as none."""
    episodes = searched.dataset.of("EpisodeOfCare")
    with_role = {e["id"] for e in episodes if "PractitionerRole" in str(e.get("careManager"))}
    assert with_role and with_role <= assert_search(searched, "EpisodeOfCare", "care-manager:missing=true")


def test_profile_below_is_by_segment(searched: Loaded) -> None:
    below = assert_search(searched, "EpisodeOfCare", f"_profile:below={PROFILE_ROOT}/episode")
    v2 = searched.oracle.ids("EpisodeOfCare", f"_profile={PROFILE_ROOT}/episode-v2")
    assert v2 and not below & v2


# The oracle's own reading of the spec, checked on hand-worked cases.


def test_oracle_strings() -> None:
    assert fold("Lefèvre") == "lefevre" and fold("ÇELIK") == "celik" and fold("Noël") == "noel"
    assert string_matches("lefe", None, ["Lefèvre"]) and not string_matches("fevre", None, ["Lefèvre"])
    assert string_matches("Lefèvre", "exact", ["Lefèvre"]) and not string_matches("Lefevre", "exact", ["Lefèvre"])
    assert string_matches("EVR", "contains", ["Lefèvre"]) and not string_matches("x", "contains", ["Lefèvre"])


def test_oracle_uris() -> None:
    root = "https://example.org/sd/psi"
    assert uri_matches(root + "/", "below", [root + "/episode"])
    assert uri_matches(root + "/episode", "below", [root + "/episode", root + "/episode/x"])
    assert not uri_matches(root + "/episode", "below", [root + "/episode-v2"])
    assert uri_matches(root + "/episode/x", "above", [root + "/episode"])
    assert not uri_matches(root + "/episode-v2", "above", [root + "/episode"])


def test_oracle_references() -> None:
    local = [Ref("Patient", "p1")]
    assert reference_matches("Patient/p1", None, local) and reference_matches("p1", None, local)
    assert reference_matches(f"{BASE}/Patient/p1", None, local) and reference_matches("p1", "Patient", local)
    assert not reference_matches("p1", "Group", local) and not reference_matches("Group/p1", None, local)
    logical = [Ref("Patient", None, None, SSIN, "123")]
    assert reference_matches(f"{SSIN}|123", "identifier", logical) and reference_matches("123", "identifier", logical)
    assert not reference_matches("other|123", "identifier", logical)

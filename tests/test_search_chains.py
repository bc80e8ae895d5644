"""Chained parameters (one and two levels, with type modifiers), reverse chains (_has, nested), and how
OR (comma) and AND (repetition) combine with them, against the oracle."""

from __future__ import annotations

import pytest
from search_data import NIHDI, SSIN, Loaded, assert_search, generate

DATA = generate()
PAT3_SSIN = DATA["Patient"][3]["identifier"][0]["value"]
ORG1_NIHDI = DATA["Organization"][1]["identifier"][0]["value"]
PRAC2_NIHDI = DATA["Practitioner"][2]["identifier"][0]["value"]

CHAINS = {
    "EpisodeOfCare": [
        f"patient.identifier={SSIN}|{PAT3_SSIN}",
        "patient.name=dup,lef",
        "patient.gender=female",
        "patient:Patient.birthdate=lt1980",
        f"organization.identifier={NIHDI}|{ORG1_NIHDI}",
        "organization.name=reseau",
        "organization.active=false",
        f"care-manager.identifier={NIHDI}|{PRAC2_NIHDI}",
        "care-manager.name=martin",
        "patient.organization.name=chu",  # two levels: episode -> patient -> managing organization
        "patient.organization.partof=Organization/org-0",
        "patient.general-practitioner.name=martin,chu",  # targets of two types
        "patient.gender=female&status=active",
        "patient._id=pat-03,pat-04",
        "patient.organization:missing=true",
        "patient.gender:not=female",
        "patient.gender=male&patient.active=false",  # both chains through the one patient reference
    ],
    "Consent": [
        f"patient.identifier={SSIN}|{PAT3_SSIN}",
        "consentor:Practitioner.name=claes",
        "consentor.name=claes",
        "organization.active=false",
        "data.status=waitlist",
        "source-reference.status=draft,active",
        "patient.organization.name=reseau",
    ],
    "AuditEvent": [
        "patient.gender=male",
        "entity:Patient.name=dupont",
        "agent:Practitioner.family=martin",
        "source:Organization.name=soins",
    ],
    "Patient": ["organization.partof:missing=false", "general-practitioner:Practitioner.gender=male"],
}

REVERSE = {
    "Patient": [
        "_has:EpisodeOfCare:patient:status=active",
        "_has:EpisodeOfCare:patient:status=active,onhold",
        "_has:Consent:patient:scope=research",
        "_has:EpisodeOfCare:patient:status=active&_has:Consent:patient:status=active",
        "_has:EpisodeOfCare:patient:date=lt2021",
        "_has:EpisodeOfCare:patient:_has:AuditEvent:entity:action=C,E",  # nested
        "_has:EpisodeOfCare:patient:care-manager.name=martin",  # a chain inside
        "_has:AuditEvent:patient:outcome=4&gender=male",
    ],
    "Practitioner": ["_has:EpisodeOfCare:care-manager:status=finished", "_has:Consent:consentor:status=active"],
    "Organization": [
        "_has:Patient:organization:gender=female",
        "_has:EpisodeOfCare:organization:date=lt2021",
        "_has:Organization:partof:name=chu",
    ],
    "EpisodeOfCare": ["_has:Consent:data:status=proposed", "_has:AuditEvent:entity:action=C,U"],
    "Consent": ["_has:Consent:source-reference:_id=consent-11,consent-17"],
}


def _cases(table: dict[str, list[str]]) -> list[tuple[str, str]]:
    return [(t, q) for t, queries in table.items() for q in queries]


@pytest.mark.parametrize(("res_type", "params"), _cases(CHAINS), ids=str)
def test_chain(searched: Loaded, res_type: str, params: str) -> None:
    assert_search(searched, res_type, params)


@pytest.mark.parametrize(("res_type", "params"), _cases(REVERSE), ids=str)
def test_reverse_chain(searched: Loaded, res_type: str, params: str) -> None:
    assert_search(searched, res_type, params)


COMBINATIONS = [
    ("EpisodeOfCare", "status=active,finished&type=psi-copd"),
    ("EpisodeOfCare", "status=active&status=finished"),
    ("EpisodeOfCare", "type=psi-copd,psi-diabetes&type:not=psi-diabetes"),
    ("EpisodeOfCare", "_id=eoc-01,eoc-02,eoc-03&_id=eoc-02,eoc-03,eoc-04"),
    ("Patient", "gender=female,male&active=true&birthdate=lt1990"),
    ("Consent", "status=active,inactive&patient=pat-05,pat-07,pat-01"),
]


@pytest.mark.parametrize(("res_type", "params"), COMBINATIONS, ids=str)
def test_or_and(searched: Loaded, res_type: str, params: str) -> None:
    assert_search(searched, res_type, params, discriminating=False)


def test_comma_is_or_and_repetition_is_and(searched: Loaded) -> None:
    active = assert_search(searched, "EpisodeOfCare", "status=active")
    finished = assert_search(searched, "EpisodeOfCare", "status=finished")
    assert assert_search(searched, "EpisodeOfCare", "status=active,finished") == active | finished
    assert assert_search(searched, "EpisodeOfCare", "status=active&status=finished", discriminating=False) == set()


def test_two_chains_through_one_reference(searched: Loaded) -> None:
    """EpisodeOfCare.patient is 0..1, so two chained criteria on it are two tests of the same patient."""
    both = assert_search(searched, "EpisodeOfCare", "patient.gender=male&patient.active=false")
    patients = searched.oracle.ids("Patient", "gender=male&active=false")
    expected = {e["id"] for e in searched.dataset.of("EpisodeOfCare") if e["patient"]["reference"][8:] in patients}
    assert both == expected

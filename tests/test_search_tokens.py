"""Token search (codes, Codings, CodeableConcepts, Identifiers, booleans, meta) against the oracle."""

from __future__ import annotations

import pytest
from search_data import (
    ACT_REASON,
    CBE,
    CONFIDENTIALITY,
    CONSENT_IDS,
    CONSENT_SCOPE,
    DICOM,
    EPISODE_IDS,
    LANGUAGE,
    LEGACY_PROGRAMME,
    LOINC,
    MRN,
    NIHDI,
    PROGRAMME,
    RESTFUL,
    SSIN,
    TAGS,
    V2_0203,
    Loaded,
    Token,
    assert_search,
    generate,
    token_matches,
    tokens,
)

DATA = generate()


def _identifier(res_type: str, index: int, system: str) -> str:
    resource = DATA[res_type][index]
    return next(i["value"] for i in resource["identifier"] if i["system"] == system)


PAT3_SSIN = _identifier("Patient", 3, SSIN)
PAT6_MRN = _identifier("Patient", 6, MRN)
ORG4_CBE = _identifier("Organization", 4, CBE)

CASES = {
    "EpisodeOfCare": [
        "status=active",
        "status=finished,cancelled",
        "status:not=active",
        "status:not=active,finished",
        "type=psi-diabetes",
        f"type={PROGRAMME}|psi-diabetes",
        f"type={LEGACY_PROGRAMME}|psi-diabetes",
        "type=|psi-diabetes",
        f"type={LEGACY_PROGRAMME}|",
        f"type:not={PROGRAMME}|psi-copd",
        "type:text=programme",
        "type:text=DIABETE",  # a Coding.display, accents and case ignored
        "type:text=insuffisance card",
        "type:text=programme c,programme b",
        "type=psi-copd&type=psi-diabetes",  # repeated: both codes on one episode
        f"identifier={EPISODE_IDS}|E-0005",
        "identifier=E-0005,E-0010,E-0042",
        f"identifier={EPISODE_IDS}|",
        "identifier:missing=true",
        "_id=eoc-01,eoc-02,eoc-59",
        "_id:not=eoc-01",
        f"_tag={TAGS}|import-2023",
        "_tag=import-2024",
        f"_tag:not={TAGS}|import-2024",
        "_tag:missing=true",
        f"_security={CONFIDENTIALITY}|R",
        "_security:missing=false",
    ],
    "Patient": [
        f"identifier={SSIN}|{PAT3_SSIN}",
        f"identifier={PAT3_SSIN}",
        f"identifier={MRN}|",
        f"identifier:of-type={V2_0203}|MR|{PAT6_MRN}",
        f"identifier:not={SSIN}|{PAT3_SSIN}",
        "identifier:text=numero de",
        "active=true",
        "active=false",
        "active:missing=true",
        "active:not=true",
        "gender=female",
        "gender=male,other",
        "gender:not=female",
        "gender:missing=true",
        "deceased=true",
        "deceased=false",
        "email=patient1@mail.example.be",
        "phone:missing=false",
        "telecom=patient4@mail.example.be",
        f"language={LANGUAGE}|fr-BE",
        "address-use=home",
        "_id=pat-01,pat-03",
    ],
    "Organization": [
        "active=false",
        "active=true",
        f"identifier={NIHDI}|",
        f"identifier={CBE}|{ORG4_CBE}",
        "identifier:missing=true",
        "type=govt",
        "type:text=healthcare",
    ],
    "Practitioner": ["communication=nl-BE", "active=false", "gender=female"],
    "Consent": [
        f"category={LOINC}|57016-8",
        "category:text=privacy policy",
        f"scope={CONSENT_SCOPE}|research",
        "scope:not=research",
        f"purpose={ACT_REASON}|HRESCH",
        "purpose:missing=true",
        "action=access,use",
        "security-label=R",
        "status=active,inactive",
        f"identifier={CONSENT_IDS}|C-0007",
    ],
    "AuditEvent": [
        "action=R",
        "outcome=0",
        "outcome:not=0",
        f"subtype={RESTFUL}|read",
        f"type={DICOM}|110112",
        "type:text=restful",
        "site=node-liege",
        "altid=alt-1",
        "altid:missing=true",
        "entity-type=2",
        "entity-role:missing=true",
        "agent-role=AUT",
    ],
}


@pytest.mark.parametrize(
    ("res_type", "params"), [(t, q) for t, queries in CASES.items() for q in queries], ids=lambda v: str(v)
)
def test_token_search(searched: Loaded, res_type: str, params: str) -> None:
    assert_search(searched, res_type, params)


def test_system_and_code_are_not_confused(searched: Loaded) -> None:
    """A code under another system is not a match for system|code (the legacy coding reuses codes)."""
    programme = searched.oracle.ids("EpisodeOfCare", f"type={PROGRAMME}|psi-copd")
    legacy = searched.oracle.ids("EpisodeOfCare", f"type={LEGACY_PROGRAMME}|psi-copd")
    assert programme and legacy and not legacy <= programme
    assert_search(searched, "EpisodeOfCare", f"type={LEGACY_PROGRAMME}|psi-copd")


def test_not_includes_resources_without_the_element(searched: Loaded) -> None:
    """`:not` is 'no matching value', so a Patient with no `active` at all is returned by active:not=true."""
    without = searched.oracle.ids("Patient", "active:missing=true")
    assert without and without <= assert_search(searched, "Patient", "active:not=true")


@pytest.mark.parametrize("params", ["type:text=programme_", "type:text=%", "status=act_ve", "identifier=E-000%"])
def test_no_wildcards_in_tokens(searched: Loaded, params: str) -> None:
    assert assert_search(searched, "EpisodeOfCare", params, discriminating=False) == set()


def test_oracle_tokens() -> None:
    coding = tokens({"coding": [{"system": "s", "code": "c", "display": "Diabète"}], "text": "Programme"})
    assert coding == [Token("s", "c", ("Diabète",)), Token(None, None, ("Programme",))]
    assert token_matches("s|c", None, coding) and token_matches("c", None, coding) and token_matches("s|", None, coding)
    assert not token_matches("|c", None, coding) and not token_matches("t|c", None, coding)
    assert token_matches("diabete", "text", coding) and token_matches("PROG", "text", coding)
    ident = tokens({"type": {"coding": [{"system": "v2", "code": "MR"}]}, "system": "mrn", "value": "7"})
    assert token_matches("v2|MR|7", "of-type", ident) and not token_matches("v2|XX|7", "of-type", ident)
    assert tokens(True) == [Token(None, "true")] and token_matches("|c", None, tokens({"code": "c"}))

"""The CPU that pseudonymisation adds per operation, in-process (no HTTP, no database), so the figures hold
on a busy machine: protecting a resource before it is stored, the stored forms of a searched SSIN,
turning a Bundle of 50 Patients back for the operator and for the aggregator, scrubbing a logged URL.

    python benchmarks/pseudonym_micro.py
"""

from __future__ import annotations

import datetime
import timeit

import orjson

from fhir_node.rules import check_digits
from fhir_node.rules.pseudonym import protect, scrub, search_forms, shown
from fhir_node.security import keyring
from fhir_node.security.access import Access, serving
from fhir_node.security.principal import LOCAL_OPERATOR, Principal, Scopes

SSIN = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/ssin"
AGGREGATOR = Principal("bihr-central-index", "aggregator", Scopes.parse("system/*.rs"))


def per_call_us(fn: object, number: int) -> float:
    return round(min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6, 2)  # type: ignore[arg-type]


def main() -> None:
    keyring.install(keyring.Keyring.ephemeral())
    ssins = [check_digits.ssin(datetime.date(1950 + i % 50, 1 + i % 12, 1 + i % 28), i % 997 + 1) for i in range(50)]
    patient = {"resourceType": "Patient", "identifier": [{"system": SSIN, "value": ssins[0]}], "active": True}
    episode = {
        "resourceType": "EpisodeOfCare",
        "status": "active",
        "type": [{"coding": [{"system": "https://fhir-node.be/fhir/CodeSystem/inclusion-status", "code": "x"}]}],
        "patient": {"reference": "Patient/1"},
        "managingOrganization": {"reference": "Organization/2"},
        "period": {"start": "2024-01-01"},
    }
    entries = [{"resource": protect({**patient, "identifier": [{"system": SSIN, "value": s}]})} for s in ssins]
    bundle = orjson.dumps({"resourceType": "Bundle", "type": "searchset", "entry": entries})
    plain = orjson.dumps({"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": episode}] * 50})
    url = f"/fhir/EpisodeOfCare?patient.identifier={SSIN}|{ssins[3]}&_count=50"
    with serving(Access(LOCAL_OPERATOR)):
        report = {
            "protect a Patient (us)": per_call_us(lambda: protect(patient), 20000),
            "protect an EpisodeOfCare without SSIN (us)": per_call_us(lambda: protect(episode), 20000),
            "stored forms of a searched SSIN, cached (us)": per_call_us(lambda: search_forms(ssins[1]), 20000),
            "one AES-SIV seal, uncached (us)": per_call_us(
                lambda: keyring.installed().seal.__wrapped__(ssins[2], b"x"), 20000
            ),
            "operator: Bundle of 50 Patients shown (us)": per_call_us(lambda: shown(bundle), 500),
            "Bundle of 50 EpisodeOfCare without SSIN shown (us)": per_call_us(lambda: shown(plain), 5000),
            "scrub a logged URL holding an SSIN (us)": per_call_us(lambda: scrub(url), 20000),
        }
    with serving(Access(AGGREGATOR)):
        report["aggregator: Bundle of 50 Patients shown (us)"] = per_call_us(lambda: shown(bundle), 500)
    report["Bundle of 50 Patients (bytes)"] = len(bundle)
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()

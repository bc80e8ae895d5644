"""fhir-node synth: deterministic, real check digits everywhere, one principal inclusion at a time,
consistent dates, and an output that loads into the node (profiles enforced)."""

from __future__ import annotations

import datetime
import itertools
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest
from fhir_files import identifiers, resources_in

from fhir_node.load import DatabaseTarget, load
from fhir_node.rules.check_digits import cbe_error, nihdi_error, ssin_error
from fhir_node.synth import (
    CBE_SYSTEM,
    FIRST_DAY,
    INCLUSION_STATUS_SYSTEM,
    NIHDI_SYSTEM,
    REFERENCE_DAY,
    SSIN_SYSTEM,
    Options,
    synth,
)

CHECKS = {SSIN_SYSTEM: ssin_error, NIHDI_SYSTEM: nihdi_error, CBE_SYSTEM: cbe_error}


def _run(out: Path, patients: int = 300, seed: int = 7, **kw: object) -> Path:
    synth(Options(patients, seed, out, **kw))  # type: ignore[arg-type]
    return out


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """A mid-sized scenario as single resources (ids and literal references: easy to follow)."""
    return list(resources_in(_run(tmp_path_factory.mktemp("synth"), 1500, 11, shape="resources")))


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    for shape in ("bundles", "resources", "ndjson"):
        first = _tree(_run(tmp_path / f"a-{shape}", shape=shape))
        assert first == _tree(_run(tmp_path / f"b-{shape}", shape=shape))
        assert first != _tree(_run(tmp_path / f"c-{shape}", seed=8, shape=shape))


def test_the_three_shapes_hold_the_same_scenario(tmp_path: Path) -> None:
    def content(shape: str) -> Counter[bytes]:
        out = _run(tmp_path / shape, shape=shape)
        # ids and references differ by shape (urn:uuid in Bundles): compare what remains.
        return Counter(
            orjson.dumps(_without_refs(r), option=orjson.OPT_SORT_KEYS)
            for r in {orjson.dumps(r): r for r in resources_in(out)}.values()
        )

    assert content("bundles") == content("resources") == content("ndjson")


def _without_refs(value: object) -> object:
    if isinstance(value, list):
        return [_without_refs(v) for v in value]
    if isinstance(value, dict):
        return {k: _without_refs(v) for k, v in value.items() if k not in ("reference", "id")}
    return value


def test_every_number_has_valid_check_digits(scenario: list[dict]) -> None:
    checked: Counter[str] = Counter()
    for resource in scenario:
        for ident in identifiers(resource):
            check = CHECKS.get(ident["system"])
            if check:
                assert check(ident["value"]) is None, (resource["resourceType"], ident)
                checked[ident["system"]] += 1
    assert set(checked) == set(CHECKS)
    ssins = {r["identifier"][0]["value"] for r in scenario if r["resourceType"] == "Patient"}
    assert len(ssins) == sum(r["resourceType"] == "Patient" for r in scenario)  # unique
    assert any(int(s[2:4]) > 12 for s in ssins), "some BIS numbers"
    assert any(ssin_error(s) is None and 97 - int(s[:9]) % 97 != int(s[9:]) for s in ssins), "births from 2000"


def test_one_principal_inclusion_at_a_time_and_consistent_dates(scenario: list[dict]) -> None:
    principal: dict[str, list[tuple[datetime.date, datetime.date]]] = defaultdict(list)
    statuses = Counter()
    for r in scenario:
        if r["resourceType"] != "EpisodeOfCare":
            continue
        start = datetime.date.fromisoformat(r["period"]["start"])
        end = datetime.date.fromisoformat(r["period"]["end"]) if "end" in r["period"] else None
        assert FIRST_DAY <= start <= REFERENCE_DAY
        assert end is None or start < end <= REFERENCE_DAY
        assert (r["status"] == "finished") == (end is not None)
        (coding,) = r["type"][0]["coding"]
        assert coding["system"] == INCLUSION_STATUS_SYSTEM
        statuses[coding["code"], r["status"]] += 1
        if coding["code"] == "principal":
            principal[r["patient"]["reference"]].append((start, end or datetime.date.max))
    for periods in principal.values():
        periods.sort()
        for (_, end), (next_start, _) in itertools.pairwise(periods):
            assert end < next_start, periods
    assert set(statuses) == {
        ("principal", "active"),
        ("principal", "finished"),
        ("information", "active"),
        ("information", "finished"),
    }
    assert any(len(p) > 1 for p in principal.values()), "some patients move to another project"


def test_consents_and_audit_trail(scenario: list[dict]) -> None:
    by_ref = {f"{r['resourceType']}/{r['id']}": r for r in scenario}
    decisions = Counter((c["provision"]["type"], c["status"]) for c in scenario if c["resourceType"] == "Consent")
    assert {("permit", "active"), ("deny", "active"), ("permit", "inactive"), ("deny", "inactive")} <= set(decisions)
    audits = [r for r in scenario if r["resourceType"] == "AuditEvent"]
    assert Counter(a["action"] for a in audits).keys() == {"C", "R", "U", "E"}
    for audit in audits:
        user = next(a for a in audit["agent"] if a["requestor"])
        assert ssin_error(user["who"]["identifier"]["value"]) is None  # the operator's NISS
        for entity in audit["entity"]:
            ref = entity.get("what", {}).get("reference")
            assert ref is None or ref in by_ref
            if ref and ref.startswith(("EpisodeOfCare/", "Consent/")):
                day = by_ref[ref].get("period", {}).get("start") or by_ref[ref]["dateTime"][:10]
                assert audit["recorded"][:10] >= day


def test_bundles_stay_within_the_chunk_size_and_carry_what_they_refer_to(tmp_path: Path) -> None:
    out = _run(tmp_path, 400, chunk=60)
    for path in out.glob("*.json"):
        bundle = orjson.loads(path.read_bytes())
        assert bundle["type"] == "transaction" and len(bundle["entry"]) <= 60
        full_urls = {e["fullUrl"] for e in bundle["entry"]}
        refs = {ref for e in bundle["entry"] for ref in _refs(e["resource"])}
        assert refs <= full_urls, path.name
        assert all(e["request"]["method"] == "POST" and e["request"]["ifNoneExist"] for e in bundle["entry"])


def _refs(value: object) -> list[str]:
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    if isinstance(value, dict):
        own = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return own + [r for v in value.values() for r in _refs(v)]
    return []


def test_the_output_loads_with_profiles_enforced(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FHIR_NODE_ENFORCE_PROFILES", "true")
    out = _run(tmp_path / "out", 120, chunk=100)
    distinct = sum(1 for _ in resources_in(_run(tmp_path / "single", 120, shape="resources")))
    target = DatabaseTarget(database_url)
    try:
        summary = load([out], target)
        assert (summary.failed, summary.failures) == (0, [])
        assert summary.created == distinct
        again = load([out], target)
        assert (again.created, again.updated, again.unchanged, again.failed) == (0, 0, distinct, 0)
    finally:
        target.close()

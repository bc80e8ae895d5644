"""fhir-node load on examples/: over HTTP to a real `fhir-node serve` and straight into the database
(SQLite and PostgreSQL), profiles enforced; a second run creates nothing; counts and failures are right."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from fhir_files import EXAMPLES, resources_in
from live_node import serve_node
from sqlalchemy import create_engine

from fhir_node.cli import main
from fhir_node.load import Answer, DatabaseTarget, HttpTarget, Summary, Target, load
from fhir_node.store.database import normalise_url

BUNDLES, RESOURCES = EXAMPLES / "bundles", EXAMPLES / "resources"
DISTINCT = sum(1 for _ in resources_in(RESOURCES))  # one file per resource; Bundles repeat the directory


@pytest.fixture
def enforcing_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Profiles enforced, as in production (the test session turns them off by default)."""
    monkeypatch.setenv("FHIR_NODE_ENFORCE_PROFILES", "true")


@pytest.fixture
def node_url(database_url: str, tmp_path: Path, enforcing_env: None) -> Iterator[str]:
    with serve_node(database_url, tmp_path, {"FHIR_NODE_ENFORCE_PROFILES": "true"}) as base:
        yield base


@pytest.fixture(params=["http", "database"])
def target(request: pytest.FixtureRequest, database_url: str, enforcing_env: None) -> Iterator[Target]:
    """Where the loader writes: a live node over HTTP, or the same kind of database in-process."""
    made: Target = (
        HttpTarget(request.getfixturevalue("node_url")) if request.param == "http" else DatabaseTarget(database_url)
    )
    yield made
    made.close()


def _counts(summary: Summary) -> tuple[int, int, int, int]:
    assert summary.failures == []
    return summary.created, summary.updated, summary.unchanged, summary.failed


def test_examples_load_once_and_only_once(target: Target) -> None:
    assert _counts(load([BUNDLES], target)) == (DISTINCT, 0, 0, 0)
    assert _counts(load([BUNDLES], target)) == (0, 0, DISTINCT, 0)
    # The same scenario as single resources (other ids, Type/id references): nothing new either.
    assert _counts(load([RESOURCES], target)) == (0, 0, DISTINCT, 0)


def test_a_load_into_postgresql_leaves_the_planner_its_statistics(database_url: str, enforcing_env: None) -> None:
    """After `fhir-node load --database`, the tables searched have been analysed (not left to autovacuum)."""
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite plans are chosen without statistics")
    target = DatabaseTarget(database_url)
    load([BUNDLES], target)
    target.close()
    engine = create_engine(normalise_url(database_url))
    with engine.connect() as conn:
        analysed = conn.exec_driver_sql(
            "SELECT relname FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL"
        ).scalars()
        assert {"resources", "idx_token", "idx_reference"} <= set(analysed)
    engine.dispose()


def test_single_resources_load_into_an_empty_node_and_link_up(node_url: str) -> None:
    target = HttpTarget(node_url)
    try:
        assert _counts(load([RESOURCES], target, batch_size=50)) == (DISTINCT, 0, 0, 0)
    finally:
        target.close()
    patients = sum(r["resourceType"] == "Patient" for r in resources_in(RESOURCES))
    inclusions = sum(r["resourceType"] == "EpisodeOfCare" for r in resources_in(RESOURCES))
    found = httpx.get(f"{node_url}/EpisodeOfCare", params={"_include": "EpisodeOfCare:patient", "_count": 1000}).json()
    modes = [e["search"]["mode"] for e in found["entry"]]
    assert modes.count("match") == inclusions
    assert modes.count("include") == patients  # every reference was rewritten to the id the node assigned


def test_changed_resources_are_updated(tmp_path: Path, database_url: str, enforcing_env: None) -> None:
    folder = shutil.copytree(RESOURCES, tmp_path / "resources")
    target = DatabaseTarget(database_url)
    try:
        load([folder], target)
        path = next(
            p
            for p in sorted(folder.glob("EpisodeOfCare-*.json"))
            if "end" not in orjson.loads(p.read_bytes())["period"]
        )
        episode = orjson.loads(path.read_bytes())
        episode["period"]["end"], episode["status"] = "2025-06-01", "finished"  # an exclusion
        path.write_bytes(orjson.dumps(episode))
        assert _counts(load([folder], target)) == (0, 1, DISTINCT - 1, 0)
        assert _counts(load([folder], target)) == (0, 0, DISTINCT, 0)
    finally:
        target.close()


def test_broken_files_fail_with_their_reason_and_a_non_zero_exit(
    tmp_path: Path, database_url: str, enforcing_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    good = [orjson.loads(p.read_bytes()) for p in sorted(RESOURCES.glob("Organization-*.json"))[:3]]
    bad_ssin = {**next(r for r in resources_in(RESOURCES) if r["resourceType"] == "Patient")}
    bad_ssin["identifier"] = [{**bad_ssin["identifier"][0], "value": "85073003329"}]
    (tmp_path / "collection.json").write_bytes(
        orjson.dumps(
            {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in [*good, bad_ssin]]}
        )
    )
    (tmp_path / "not-json.json").write_text("{ no")
    (tmp_path / "lines.ndjson").write_bytes(orjson.dumps({"resourceType": "Patient", "nickname": "Jos"}) + b"\n")
    code = main(["load", str(tmp_path), "--database", database_url, "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    assert "created 3, updated 0, unchanged 0, failed 3" in out
    assert "collection.json entry[3]: 422 invariant" in out and "bihr-ssin" in out
    assert "not-json.json: not JSON" in out
    assert "lines.ndjson:1: 400 structure" in out and "nickname" in out
    assert main(["load", str(tmp_path / "missing"), "--database", database_url, "--quiet"]) == 2


@pytest.mark.parametrize("option", ["--in-flight", "--batch-size"])
@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_count_that_is_not_positive_is_a_usage_error(
    tmp_path: Path, option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["load", str(tmp_path), "--url", "http://127.0.0.1:9/fhir", option, value])
    assert refused.value.code == 2
    assert f"invalid positive int value: '{value}'" in capsys.readouterr().err


def test_a_resource_repeated_in_the_files_is_created_once(
    tmp_path: Path, database_url: str, enforcing_env: None
) -> None:
    patient = next(r for r in resources_in(RESOURCES) if r["resourceType"] == "Patient")
    (tmp_path / "one.json").write_bytes(orjson.dumps(patient))
    (tmp_path / "two.json").write_bytes(
        orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient}]})
    )
    target = DatabaseTarget(database_url)
    try:
        assert _counts(load([tmp_path], target)) == (1, 0, 0, 0)
        assert _counts(load([tmp_path], target)) == (0, 0, 1, 0)
    finally:
        target.close()


class _Watched:
    """A real target whose posts are watched: how many were on their way at once, at most. A Bundle holding
    `slow` waits `delay` seconds before it goes, so one sent after it would reach the node first."""

    def __init__(self, target: Target, slow: bytes = b"", delay: float = 0.0) -> None:
        self.target = target
        self.on_the_way = self.most = 0
        self.lock = threading.Lock()
        self.slow, self.delay = slow, delay

    def post(self, bundle: bytes) -> Answer:
        with self.lock:
            self.on_the_way += 1
            self.most = max(self.most, self.on_the_way)
        try:
            if self.slow and self.slow in bundle:
                time.sleep(self.delay)
            return self.target.post(bundle)
        finally:
            with self.lock:
                self.on_the_way -= 1

    def close(self) -> None:
        self.target.close()


def test_bundles_on_their_way_together_wait_for_the_ids_they_refer_to(node_url: str, tmp_path: Path) -> None:
    """Two wrapped Bundles travel at once, and one referring (`Type/id`) to a resource of a Bundle still on
    its way is sent only once that answer gave the node's id: every reference lands on what was loaded."""
    every = list(resources_in(RESOURCES))
    first = [r for r in every if r["resourceType"] in ("Organization", "Practitioner")]
    patients = [r for r in every if r["resourceType"] == "Patient"][:8]
    lines = [*first]
    for patient in patients:  # each patient followed by its inclusions: the next Bundle refers to the one before
        ref = f"Patient/{patient['id']}"
        lines += [
            patient,
            *(r for r in every if r["resourceType"] == "EpisodeOfCare" and r["patient"]["reference"] == ref),
        ]
    (tmp_path / "all.ndjson").write_bytes(b"\n".join(orjson.dumps(r) for r in lines))
    watched = _Watched(HttpTarget(node_url))
    try:
        assert _counts(load([tmp_path], watched, batch_size=1, in_flight=2)) == (len(lines), 0, 0, 0)
    finally:
        watched.close()
    assert watched.most == 2
    episodes = httpx.get(f"{node_url}/EpisodeOfCare", params={"_count": "100"}).json()["entry"]
    refs = {e["resource"]["patient"]["reference"] for e in episodes}
    assert len(refs) == len(patients)
    assert all(httpx.get(f"{node_url}/{ref}").status_code == 200 for ref in refs)


def test_a_bundle_with_a_conditional_reference_waits_for_every_bundle_on_its_way(node_url: str, tmp_path: Path) -> None:
    """The node resolves `Patient?identifier=...` by a search when the Bundle arrives: a Bundle holding one is
    sent only once those on their way have landed, even when the Bundle before it is slow to go."""
    every = list(resources_in(RESOURCES))
    lines = [r for r in every if r["resourceType"] in ("Organization", "Practitioner")]
    patients = [r for r in every if r["resourceType"] == "Patient" and r.get("identifier")][:4]
    for patient in patients:
        ident = patient["identifier"][0]
        inclusion = next(
            r
            for r in every
            if r["resourceType"] == "EpisodeOfCare" and r["patient"]["reference"] == f"Patient/{patient['id']}"
        )
        by_identifier = {
            **inclusion,
            "patient": {**inclusion["patient"], "reference": f"Patient?identifier={ident['system']}|{ident['value']}"},
        }
        lines += [patient, by_identifier]
    (tmp_path / "all.ndjson").write_bytes(b"\n".join(orjson.dumps(r) for r in lines))
    watched = _Watched(HttpTarget(node_url), slow=b'"resourceType":"Patient"', delay=0.3)
    try:
        assert _counts(load([tmp_path], watched, batch_size=1, in_flight=2)) == (len(lines), 0, 0, 0)
    finally:
        watched.close()
    episodes = httpx.get(f"{node_url}/EpisodeOfCare", params={"_count": "100"}).json()["entry"]
    assert len(episodes) == len(patients)
    assert all(httpx.get(f"{node_url}/{e['resource']['patient']['reference']}").status_code == 200 for e in episodes)

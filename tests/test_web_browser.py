"""The web page in a real browser: Debian's headless Chromium driven by Playwright (never a browser Playwright
downloads), against a real `fhir-node serve` on loopback. The walk-through runs with JavaScript off (the pages
need none); the checks of focus, labels and blocked scripts run with it on.

Screenshots go to a temporary directory, or to FHIR_NODE_WEB_SCREENSHOTS (the README's docs/web-search.png is
the web-search.png of `FHIR_NODE_WEB_SCREENSHOTS=/tmp/shots ./dev test tests/test_web_browser.py`)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from access_data import NIHDI, SSIN, STATUS
from live_node import serve_node
from playwright.sync_api import expect, sync_playwright

CHROMIUM_NAMES = ("chromium", "chromium-browser")
SCRIPT = "<script>window.pwned = true; alert('pwned')</script>"


def chromium() -> str:
    """Debian's Chromium, or a skip saying how to install it (a failure with FHIR_NODE_REQUIRE_CHROMIUM=1, as
    in .ci/run, which installs it)."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    reason = "Chromium is not installed (Debian: apt-get install chromium chromium-driver; .ci/run does this)"
    if os.environ.get("FHIR_NODE_REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"{reason}\n(FHIR_NODE_REQUIRE_CHROMIUM=1: this must not be skipped)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    """A real node on 127.0.0.1 with 5 active inclusions of 5 patients in one project, one finished, and one
    Patient whose values and narrative carry a script; yields the node's origin and what was loaded."""
    chromium()
    tmp = tmp_path_factory.mktemp("web-browser")
    env = {"FHIR_NODE_AUDIT": "true", "FHIR_NODE_ENFORCE_PROFILES": "false"}
    with serve_node(f"sqlite:///{tmp / 'node.db'}", tmp, extra_env=env) as base, httpx.Client(base_url=base) as fhir:

        def post(body: dict[str, Any]) -> str:
            r = fhir.post(f"/{body['resourceType']}", json=body)
            assert r.status_code == 201, r.text
            return r.json()["id"]

        org = post(
            {
                "resourceType": "Organization",
                "name": "Zorgzaam Kempen",
                "identifier": [{"system": NIHDI, "value": "90600473"}],
            }
        )
        patients = [
            post({"resourceType": "Patient", "identifier": [{"system": SSIN, "value": ssin}]})
            for ssin in ("85073003328", "17073003384", "98472899765", "01490700185", "90051846844")
        ]
        active = []
        for n, patient in enumerate(patients):
            active.append(
                post(
                    {
                        "resourceType": "EpisodeOfCare",
                        "status": "active",
                        "type": [{"coding": [{"system": STATUS, "code": "principal"}]}],
                        "patient": {"reference": f"Patient/{patient}"},
                        "managingOrganization": {"reference": f"Organization/{org}"},
                        "period": {"start": f"2024-0{n + 1}-01"},
                    }
                )
            )
        post(
            {
                "resourceType": "EpisodeOfCare",
                "status": "finished",
                "patient": {"reference": f"Patient/{patients[0]}"},
                "period": {"start": "2019-01-01", "end": "2020-01-01"},
            }
        )
        hostile = post(
            {
                "resourceType": "Patient",
                "identifier": [{"system": "urn:example", "value": SCRIPT}],
                "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml"><b>bold</b></div>'},
            }
        )
        yield base.removesuffix("/fhir"), {"active": set(active), "patients": patients, "hostile": hostile}


@pytest.fixture(scope="module")
def browser(node: tuple[str, dict[str, Any]]) -> Iterator[Any]:
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium())
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("FHIR_NODE_WEB_SCREENSHOTS")
    out = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_click_through_the_pages_search_and_page_through_results_without_javascript(
    browser: Any, node: tuple[str, dict[str, Any]], shots: Path
) -> None:
    origin, loaded = node
    context = browser.new_context(base_url=origin, java_script_enabled=False, viewport={"width": 1280, "height": 900})
    page = context.new_page()

    page.goto("/")
    assert page.locator("h1").inner_text() == "BIHR data-holder FHIR node"
    assert page.get_by_role("row", name="EpisodeOfCare").count() == 1
    page.screenshot(path=shots / "web-home.png", full_page=True)

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Profiles").click()
    page.get_by_role("link", name="BIHR integrated-care inclusion").click()
    assert page.url.endswith("/profiles/bihr-inclusion")
    assert page.get_by_role("table").get_by_role("rowheader", name="inclusionStatus").count() == 1
    assert '"resourceType": "EpisodeOfCare"' in page.locator("pre.json").inner_text()
    page.screenshot(path=shots / "web-profile.png")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Search").click()
    page.get_by_label("Resource type").select_option("EpisodeOfCare")
    page.get_by_role("button", name="Show its search parameters").click()
    page.get_by_label("status (token)").fill("active")
    page.get_by_label("Sort by").select_option("date")
    page.get_by_label("Results per page").fill("2")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator(".query code")).to_contain_text("status=active")
    page.screenshot(path=shots / "web-search.png", full_page=True)

    seen: list[str] = []
    while True:
        links = page.locator("table tbody th a")
        seen += [links.nth(i).inner_text().removeprefix("EpisodeOfCare/") for i in range(links.count())]
        following = page.get_by_role("link", name="Next page")
        if following.count() == 0:
            break
        following.click()
    assert len(seen) == 5 and set(seen) == loaded["active"]
    page.get_by_role("link", name="Previous page").click()
    assert page.locator("table tbody tr").count() == 2

    page.locator("table tbody th a").first.click()
    page.get_by_role("table").get_by_role("link", name="Patient/").first.click()
    page.get_by_role("link", name="This patient's inclusions").click()
    assert page.get_by_role("heading", name="Who accessed this patient's data").count() == 1
    assert page.get_by_role("region", name="Who accessed this patient's data").get_by_role("row").count() > 1
    page.screenshot(path=shots / "web-patient.png", full_page=True)
    context.close()


def test_keyboard_labels_and_no_script_runs(browser: Any, node: tuple[str, dict[str, Any]], shots: Path) -> None:
    origin, loaded = node
    context = browser.new_context(base_url=origin)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))

    page.goto("/search?resource=EpisodeOfCare")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    page.wait_for_function("location.hash === '#main'")  # the link's navigation ends after the key press

    unlabelled = page.evaluate(
        "[...document.querySelectorAll('input:not([type=hidden]), select')]"
        ".filter(e => e.labels.length === 0).map(e => e.name)"
    )
    assert unlabelled == []
    page.get_by_label("status (token)").focus()
    page.keyboard.type("active")
    page.keyboard.press("Enter")  # submits the form, as a keyboard user would
    expect(page.locator(".query code")).to_contain_text("status=active")

    for path in (f"/resource/Patient/{loaded['hostile']}", f"/patient/{loaded['hostile']}"):
        page.goto(path)
        assert page.evaluate("window.pwned === undefined")
        assert SCRIPT in page.locator("main").inner_text()  # shown, as text
    page.screenshot(path=shots / "web-escaped.png")
    assert problems == []
    context.close()

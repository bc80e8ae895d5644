"""The web page at `/` through the real ASGI app (FHIR_NODE_AUTH=none, the loopback operator): what each page
shows, that every value is escaped, that pages are protected by a restrictive CSP, and the 404s."""

from __future__ import annotations

import io
import json
import re
import tarfile
from html import unescape

import pytest
from inclusions import created
from starlette.testclient import TestClient

from fhir_node import __version__
from fhir_node.web.publication import package_name, profiles

SCRIPT = "<script>alert('x')</script>"
#: Valid narrative XHTML (the node refuses scripts and event handlers in narratives: txt-1/txt-2), still not trusted.
NARRATIVE = (
    '<div xmlns="http://www.w3.org/1999/xhtml"><p><b>bold</b> <a href="https://example.org/x">link</a></p></div>'
)


def html_of(client: TestClient, path: str, status: int = 200) -> str:
    r = client.get(path, headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    return r.text


def text_of(page: str) -> str:
    """The page as a reader sees it: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", page)).split())


def test_home_shows_identity_version_database_and_the_capability_statement(client: TestClient) -> None:
    page = html_of(client, "/")
    text = text_of(page)
    assert f"fhir-node {__version__}" in text and "4.0.1" in text
    database = "sqlite" if client.app.state.node.db.is_sqlite else "postgresql"  # type: ignore[attr-defined]
    assert f"Database {database}" in text
    assert "Authentication none (node operator, loopback only)" in text
    metadata = client.get("/fhir/metadata").json()
    for resource in metadata["rest"][0]["resource"]:
        row = re.search(rf'<th scope="row">{resource["type"]}</th>(.*?)</tr>', page, re.S)
        assert row, resource["type"]
        assert f"{len(resource['searchParam'])} parameters" in row.group(1)
        for interaction in resource["interaction"]:
            assert interaction["code"] in row.group(1)
    assert '<a href="/profiles/bihr-inclusion">' in page


def test_each_profile_page_shows_elements_bindings_invariants_an_example_and_the_package(client: TestClient) -> None:
    index = html_of(client, "/profiles")
    for pid in profiles():
        assert f'href="/profiles/{pid}"' in index
    page = html_of(client, "/profiles/bihr-inclusion")
    text = text_of(page)
    assert "https://fhir-node.be/fhir/StructureDefinition/bihr-inclusion" in text
    assert re.search(r"inclusionStatus</th>\s*<td>1\.\.1</td>", page)  # element and cardinality
    assert "required: https://fhir-node.be/fhir/ValueSet/inclusion-status" in text  # binding
    assert "bihr-ssin (error)" in text  # an invariant with its severity
    example = re.search(r'<pre class="json"[^>]*>(.*?)</pre>', page, re.S)
    assert example and "bihr-inclusion" in json.loads(unescape(example.group(1)))["meta"]["profile"][0]
    assert f'href="/package/{package_name()}"' in page


def test_the_npm_package_link_serves_the_guide_as_an_npm_tarball(client: TestClient) -> None:
    r = client.get(f"/package/{package_name()}")
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        manifest = json.load(tar.extractfile("package/package.json"))  # type: ignore[arg-type]
        names = tar.getnames()
    assert f"{manifest['name']}-{manifest['version']}.tgz" == package_name()
    assert "package/StructureDefinition-bihr-inclusion.json" in names
    assert "package/other/StructureDefinition-bihr-inclusion.html" in names and "package/other/web.css" in names


def test_values_and_narratives_are_shown_as_text_never_as_markup(client: TestClient) -> None:
    pid = created(
        client,
        {
            "resourceType": "Patient",
            "text": {"status": "generated", "div": NARRATIVE},
            "identifier": [{"system": "urn:example", "value": SCRIPT}],
        },
    )
    org = created(client, {"resourceType": "Organization", "name": f'"><img src=x onerror=alert(1)>{SCRIPT}'})
    pages = [
        html_of(client, f"/resource/Patient/{pid}"),
        html_of(client, f"/patient/{pid}"),
        html_of(client, "/search?resource=Patient&run=1"),
        html_of(client, f"/resource/Organization/{org}"),
        html_of(client, "/search?resource=Organization&run=1"),
    ]
    for page in pages:
        assert "<script" not in page and "<img" not in page and "<b>" not in page and 'example.org/x"' not in page
        assert "&lt;script&gt;" in page
    assert SCRIPT in text_of(pages[0]) and "<b>bold</b>" in text_of(pages[0])  # shown, as text


def test_search_builds_the_fhir_query_from_the_form_and_pages_through_results(client: TestClient) -> None:
    ids = {created(client, {"resourceType": "Organization", "name": f"Project {n}", "active": True}) for n in range(5)}
    created(client, {"resourceType": "Organization", "name": "Closed", "active": False})
    form = html_of(client, "/search?resource=Organization")
    for param in client.get("/fhir/metadata").json()["rest"][0]["resource"]:
        if param["type"] == "Organization":
            for p in param["searchParam"]:
                assert f'<label for="p-{p["name"]}">' in form and f'name="{p["name"]}"' in form
    page = html_of(client, "/search?resource=Organization&active=true&name=&_sort=&_count=2&run=1")
    assert "curl -s 'http://127.0.0.1:8080/fhir/Organization?active=true&_count=2'" in unescape(page)
    seen: list[str] = []
    pages = 0
    while True:
        pages += 1
        seen += re.findall(r'<a href="/resource/Organization/([^"]+)">', page)
        following = re.search(r'<a href="([^"]+)" rel="next">', page)
        if not following:
            break
        page = html_of(client, unescape(following.group(1)))
        assert "&amp;_cursor=" in page  # the curl line shows the page's own query
    assert pages == 3 and len(seen) == 5 and set(seen) == ids
    assert '<a href="/search?q=' in page and 'rel="prev"' in page


def test_a_bad_query_is_the_fhir_error_on_the_page(client: TestClient) -> None:
    page = html_of(client, "/search?resource=Patient&unknown-param=1&run=1", 400)
    assert "unknown-param" in text_of(page)


@pytest.mark.parametrize(
    "path",
    [
        "/nothing-here",
        "/profiles/no-such-profile",
        "/package/other-1.0.0.tgz",
        "/search?resource=Nonsense",
        "/search?q=Nonsense%3Fa%3Db",
        "/resource/Nonsense/1",
        "/resource/Patient/no-such-id",
        "/patient/no-such-id",
    ],
)
def test_unknown_pages_are_html_404s(client: TestClient, path: str) -> None:
    html_of(client, path, 404)


def test_the_fhir_api_and_clients_not_asking_for_html_keep_the_outcome_404(client: TestClient) -> None:
    for path, accept in (("/fhir/Patient/a/b/c/d", "text/html"), ("/nothing-here", "application/fhir+json")):
        r = client.get(path, headers={"Accept": accept})
        assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"


def test_the_page_serves_loopback_only_without_authentication(client: TestClient) -> None:
    far = TestClient(client.app, base_url="http://127.0.0.1:8080", client=("10.9.8.7", 5000))
    for path in ("/", "/search?resource=Patient&run=1", "/me"):
        assert far.get(path).status_code == 403

"""The pages: the node and its CapabilityStatement (`/`), the published profiles (`/profiles`), a search
form over the served SearchParameters (`/search`), a resource (`/resource/{type}/{id}`) and a patient's
own inclusions, consent and "who accessed my data" (`/patient/{id}`, `/me`).

Every value about anyone comes from a FHIR call run as the caller (`internal.fhir_get`): the policy
decides what a page shows, and the audit records it, exactly as for the same FHIR request. The page
request itself carries the caller's `Authorization` header; nothing here verifies a token (`/me` only reads
the `sub` it claims, to know whom to search for) or reads the database."""

from __future__ import annotations

import json
import re
import shlex
from functools import cache
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jwt
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fhir_node import FHIR_VERSION, __version__
from fhir_node.api.errors import http_error
from fhir_node.api.routes import base_of, node_of
from fhir_node.conformance.capability import capability_statement
from fhir_node.conformance.package import shipped
from fhir_node.interactions.incoming import ID_PATTERN
from fhir_node.security.relationships import SSIN
from fhir_node.web import columns, publication
from fhir_node.web.guide import index_page, profile_page
from fhir_node.web.internal import Answer, fhir_get
from fhir_node.web.render import HEADERS, STATIC, page

#: The page's own controls on /search; every other query parameter is a FHIR search parameter.
_CONTROLS = ("resource", "run", "q")
_AUDIT_PAGE = "20"


def _capability(request: Request) -> dict[str, Any]:
    """The CapabilityStatement the pages show, built once per app (~4 ms): it depends on the node's settings
    and definitions, not on the request, but for `implementation.url`, which no page shows (they show
    `base_of` the request)."""
    state = request.app.state
    if not hasattr(state, "web_capability"):
        state.web_capability = capability_statement(node_of(request).settings, base_of(request))
    return state.web_capability


def _served(request: Request) -> dict[str, dict[str, Any]]:
    """The CapabilityStatement's resource entries, by type."""
    return {r["type"]: r for r in _capability(request)["rest"][0]["resource"]}


def _curl(request: Request, path: str, params: list[tuple[str, str]]) -> str:
    """The FHIR call a page made, as a command to run it again (the token as $TOKEN, never its value)."""
    url = f"{base_of(request)}/{path}" + (f"?{urlencode(params)}" if params else "")
    auth = ' -H "Authorization: Bearer $TOKEN"' if "authorization" in request.headers else ""
    return f"curl -s{auth} {shlex.quote(url)}"


def _failed(answer: Answer, what: str) -> Response:
    """The FHIR call's refusal or error as the page's own answer (401 keeps its challenge)."""
    headers = {"WWW-Authenticate": answer.challenge} if answer.challenge else None
    status = answer.status if answer.status < 500 else 503
    return page("error.html", status, headers, title=what, code=answer.status, message=answer.diagnostics())


def _not_found(message: str) -> Response:
    return page("error.html", 404, title="Not found", code=404, message=message)


def _entries(bundle: dict[str, Any], mode: str = "match") -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", ()) if e.get("search", {}).get("mode", "match") == mode]


def _table(resources: list[dict[str, Any]], res_type: str) -> dict[str, Any]:
    """A results table: headings and, per resource, its link, last update and cells."""
    return {
        "headings": columns.headings(res_type),
        "rows": [
            {
                "label": f"{r['resourceType']}/{r['id']}",
                "href": f"/resource/{r['resourceType']}/{r['id']}",
                "updated": r.get("meta", {}).get("lastUpdated", ""),
                "cells": columns.row(r),
            }
            for r in resources
        ],
    }


def _page_link(request: Request, bundle: dict[str, Any], relation: str) -> str | None:
    """The bundle's `next`/`previous` link as this page's URL (only links under this node's FHIR base)."""
    base = base_of(request) + "/"
    for link in bundle.get("link", ()):
        if link.get("relation") == relation and link.get("url", "").startswith(base):
            return "/search?" + urlencode({"q": link["url"][len(base) :]})
    return None


async def home(request: Request) -> Response:
    node = node_of(request)
    cap = _capability(request)
    rest = cap["rest"][0]
    profile_ids = {p["url"]: p["id"] for p in publication.profiles().values()}
    return page(
        "home.html",
        title="fhir-node",
        cap=cap,
        rest=rest,
        version=__version__,
        fhir_version=FHIR_VERSION,
        base=base_of(request),
        database=node.db.engine.dialect.name,
        guide=publication.guide(),
        profile_ids=profile_ids,
    )


@cache
def _index_html() -> str:
    """The guide's page, rendered once: it depends only on the files the node ships."""
    return index_page(publication.guide(), shipped(), package=publication.package_name())


@cache
def _profile_html(profile_id: str) -> str:
    """A published profile's page, rendered once (~15 ms each): it depends only on the files the node ships."""
    found = publication.profiles()[profile_id]
    return profile_page(found, example=publication.example(found), package=publication.package_name())


async def profiles_index(_request: Request) -> Response:
    return Response(_index_html(), 200, HEADERS, media_type="text/html")


async def profile(request: Request) -> Response:
    profile_id = request.path_params["id"]
    if profile_id not in publication.profiles():
        return _not_found(f"The guide publishes no profile with id {profile_id!r}")
    return Response(_profile_html(profile_id), 200, HEADERS, media_type="text/html")


async def package(request: Request) -> Response:
    name = publication.package_name()
    if request.path_params["file"] != name:
        return _not_found(f"The guide's npm package is {name}")
    headers = {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "public, max-age=3600"}
    return Response(publication.package_tarball(), 200, headers, media_type="application/gzip")


def _search_request(request: Request) -> tuple[str, list[tuple[str, str]], bool]:
    """The resource type, FHIR parameters and whether to run: from `q` (a paging link: `Type?query`), or
    from the form (`resource`, one field per search parameter, `run`)."""
    q = request.query_params.get("q")
    if q is not None:
        res_type, _, query = q.partition("?")
        return res_type, parse_qsl(query, keep_blank_values=True), True
    params = [(k, v.strip()) for k, v in request.query_params.multi_items() if k not in _CONTROLS and v.strip()]
    return request.query_params.get("resource", "EpisodeOfCare"), params, "run" in request.query_params


async def search(request: Request) -> Response:
    served = _served(request)
    res_type, params, run = _search_request(request)
    if res_type not in served:
        return _not_found(f"This node serves no resource type {res_type!r}")
    values = dict(params)
    context: dict[str, Any] = {
        "title": f"Search {res_type}",
        "types": sorted(served),
        "resource": res_type,
        "fields": [
            {**p, "documentation": _describe(p["documentation"], res_type), "value": values.get(p["name"], "")}
            for p in sorted(served[res_type]["searchParam"], key=lambda p: (p["name"].startswith("_"), p["name"]))
        ],
        "values": values,
        "count_default": node_of(request).settings.default_count,
        "ran": None,
    }
    if run:
        answer = await fhir_get(request, res_type, params)
        if not answer.ok:
            return _failed(answer, f"Search {res_type}")
        matches = _entries(answer.body)
        context["ran"] = {
            "curl": _curl(request, res_type, params),
            "total": answer.body.get("total"),
            "shown": len(matches),
            "included": len(_entries(answer.body, "include")),
            "table": _table(matches, res_type),
            "next": _page_link(request, answer.body, "next"),
            "previous": _page_link(request, answer.body, "previous"),
        }
    return page("search.html", **context)


def _describe(documentation: str, res_type: str) -> str:
    """A parameter's description for one type: R4's shared parameters describe every type they serve in one
    markdown list (`* [EpisodeOfCare](episodeofcare.html): ...`); keep this type's line."""
    found = re.search(rf"\[{res_type}\]\([^)]*\): ([^\n]*)", documentation)
    return (found.group(1) if found else documentation.split("\n", 1)[0]).strip()


async def resource(request: Request) -> Response:
    res_type, res_id = request.path_params["type"], request.path_params["id"]
    if res_type not in _served(request) or not ID_PATTERN.fullmatch(res_id):
        return _not_found(f"This node serves no {res_type}/{res_id}")
    answer = await fhir_get(request, f"{res_type}/{res_id}")
    if not answer.ok:
        return _failed(answer, f"{res_type}/{res_id}")
    body = answer.body
    return page(
        "resource.html",
        title=f"{res_type}/{res_id}",
        resource=body,
        served_json=json.dumps(body, indent=2, ensure_ascii=False),
        table=_table([body], res_type),
        query=_curl(request, f"{res_type}/{res_id}", []),
    )


async def patient(request: Request) -> Response:
    res_id = request.path_params["id"]
    if not ID_PATTERN.fullmatch(res_id):
        return _not_found(f"No Patient/{res_id}")
    return await _patient_page(request, res_id)


async def me(request: Request) -> Response:
    """The signed-in person's own page: the Patient with the SSIN their token names, as the FHIR API lets
    them see it. The token's `sub` is read unverified, only to know whom to search for: the search itself
    goes through authentication and the policy (a bad token is its 401, someone else's record its 404)."""
    sub = _claimed_subject(request)
    if sub is None and node_of(request).settings.auth == "none":
        return page("me.html", title="My data", operator=True)
    answer = await fhir_get(request, "Patient", [("identifier", f"{SSIN}|{sub or ''}")])
    if not answer.ok:
        return _failed(answer, "My data")
    found = _entries(answer.body)
    if len(found) != 1:
        return page("me.html", title="My data", operator=False)
    return await _patient_page(request, found[0]["id"])


def _claimed_subject(request: Request) -> str | None:
    """The `sub` a bearer token claims (not verified here: see `me`)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    try:
        sub = jwt.decode(token.strip(), options={"verify_signature": False}).get("sub")
    except jwt.PyJWTError:
        return None
    return sub if isinstance(sub, str) else None


async def _patient_page(request: Request, res_id: str) -> Response:
    """A patient's inclusions, consents and who accessed their data, each as the caller may see it."""
    answer = await fhir_get(request, f"Patient/{res_id}")
    if not answer.ok:
        return _failed(answer, f"Patient/{res_id}")
    about = [("patient", f"Patient/{res_id}"), ("_sort", "-date")]
    sections = []
    for heading, res_type, extra in (
        ("Inclusions in integrated-care projects", "EpisodeOfCare", []),
        ("Research consent", "Consent", []),
        ("Who accessed this patient's data", "AuditEvent", [("_count", _AUDIT_PAGE)]),
    ):
        params = about + extra
        found = await fhir_get(request, res_type, params)
        sections.append(
            {
                "heading": heading,
                "id": res_type.lower(),
                "curl": _curl(request, res_type, params),
                "error": None if found.ok else found.diagnostics(),
                "table": _table(_entries(found.body), res_type) if found.ok else None,
                "more": _page_link(request, found.body, "next") if found.ok else None,
            }
        )
    return page("patient.html", title=f"Patient/{res_id}", patient=answer.body, sections=sections)


async def not_found_or_fhir(request: Request, exc: Exception) -> Response:
    """A 404 or 405 of the router: an HTML page for a browser (it accepts text/html) outside the FHIR API, the
    FHIR OperationOutcome for everything else."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    fhir = path == "/fhir" or path.startswith("/fhir/")
    if fhir or exc.status_code != 404 or "text/html" not in request.headers.get("accept", ""):
        return await http_error(request, exc)
    return _not_found(f"There is no page at {path}")


ROUTES = [
    Route("/", home, methods=["GET"]),
    Route("/profiles", profiles_index, methods=["GET"]),
    Route("/profiles/{id}", profile, methods=["GET"]),
    Route("/package/{file}", package, methods=["GET"]),
    Route("/search", search, methods=["GET"]),
    Route("/resource/{type}/{id}", resource, methods=["GET"]),
    Route("/patient/{id}", patient, methods=["GET"]),
    Route("/me", me, methods=["GET"]),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]

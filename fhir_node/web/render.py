"""HTML from Jinja2 templates, every value escaped (autoescape on for every template; nothing is marked
safe: a narrative's XHTML or a `<script>` in a value is shown as text), answered with headers that keep
a browser from running or loading anything the page did not mean to."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.responses import HTMLResponse

HERE = Path(__file__).parent
STATIC = HERE / "static"

#: No script at all, styles and images only from the node, forms only to the node, never framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
#: What pages need besides the headers every answer gets (`api.edge`: no-store, nosniff): their own CSP,
#: which lets their stylesheet load and their forms submit, and no referrer (URLs carry search values).
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
}


@cache
def environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, **context: Any) -> str:
    context.setdefault("standalone", False)
    context.setdefault("current", "")
    return environment().get_template(template).render(**context)


def page(template: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
    """A page of the node, with the protective headers."""
    return HTMLResponse(render(template, **context), status, {**HEADERS, **(headers or {})})


def stylesheet() -> str:
    """The one stylesheet; inlined into the package's standalone pages, served at /static/web.css here."""
    return (STATIC / "web.css").read_text(encoding="utf-8")

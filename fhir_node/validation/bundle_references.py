"""References resolved within a Bundle, as R4 resolves them (bundle.html#references): a relative reference
`Type/id` in an entry whose fullUrl is `base/Type2/id2` means `base/Type/id`; it resolves to the entry
with that fullUrl, and a versioned one (`.../_history/v`) to the entry with that fullUrl and that
`meta.versionId`. Entries may share a fullUrl when their versions differ (bdl-7), so a reference without
a version to such a fullUrl matches several entries: it is ambiguous, which HL7's validator reports as
an error ("multiple matches in bundle").
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

from fhir_node.outcome import Issue, error

_RELATIVE = re.compile(r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}")
_ABSOLUTE = re.compile(r"(https?://.+/[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?")


def ambiguous_references(bundle: dict[str, Any], where: str) -> Iterator[Issue]:
    entries = [e for e in bundle.get("entry", ()) if isinstance(e, dict)]
    full_urls = Counter(_unversioned(e.get("fullUrl")) for e in entries)
    shared = {url for url, n in full_urls.items() if url and n > 1}
    if not shared:
        return
    for i, entry in enumerate(entries):
        base = _base(entry.get("fullUrl"))
        if base is None or not isinstance(entry.get("resource"), dict):
            continue
        for at, reference in _references(entry["resource"], f"{where}.entry[{i}].resource"):
            target = f"{base}/{reference}" if _RELATIVE.fullmatch(reference) else reference
            if target in shared:
                text = f"The reference '{reference}' matches {full_urls[target]} entries of the Bundle: give a version"
                yield error("invalid", text, at)


def _unversioned(full_url: Any) -> str | None:
    match = _ABSOLUTE.fullmatch(full_url) if isinstance(full_url, str) else None
    return match.group(1) if match else None


def _base(full_url: Any) -> str | None:
    """The server base of an entry's `http(s)://base/Type/id` fullUrl."""
    unversioned = _unversioned(full_url)
    return unversioned.rsplit("/", 2)[0] if unversioned else None


def _references(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """(location, reference) of every literal reference without a version in `value`."""
    if isinstance(value, dict):
        reference = value.get("reference")
        if isinstance(reference, str) and "/_history/" not in reference:
            yield f"{where}.reference", reference
        for key, child in value.items():
            yield from _references(child, f"{where}.{key}")
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _references(child, f"{where}[{i}]")

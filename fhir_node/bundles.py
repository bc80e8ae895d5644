"""Bundles assembled from stored bytes: entries splice each version's JSON in without re-parsing it."""

from __future__ import annotations

import os
from typing import Any

import orjson

from fhir_node.store.repository import Version, instant, now

_STATUS = {201: "201 Created", 200: "200 OK", 204: "204 No Content"}


def history_entry(base: str, v: Version) -> bytes:
    """A history entry: the version's resource (none for a deletion), its request and response."""
    url = v.res_type if v.method == "POST" else f"{v.res_type}/{v.res_id}"
    rest = orjson.dumps(
        {
            "request": {"method": v.method, "url": url},
            "response": {"status": _STATUS[v.status], "etag": v.etag, "lastModified": instant(v.last_updated)},
        }
    )
    head = b'{"fullUrl":' + orjson.dumps(f"{base}/{v.res_type}/{v.res_id}")
    if v.content is not None:
        head += b',"resource":' + v.content
    return head + b"," + rest[1:]


def bundle(bundle_type: str, entries: list[bytes], links: dict[str, str], **extra: Any) -> bytes:
    """A Bundle of pre-serialised entries, with `links` (relation -> url) and any extra fields (total)."""
    head: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": os.urandom(16).hex(),  # a FHIR id, random as a UUID's: 0.6 us where str(uuid4()) took 3.4
        "meta": {"lastUpdated": instant(now())},
        "type": bundle_type,
        **extra,
    }
    if links:  # FHIR JSON has no empty arrays
        head["link"] = [{"relation": rel, "url": url} for rel, url in links.items()]
    out = orjson.dumps(head)
    if not entries:
        return out
    return out[:-1] + b',"entry":[' + b",".join(entries) + b"]}"

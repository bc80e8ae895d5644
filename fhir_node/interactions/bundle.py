"""transaction and batch: Bundles posted to the base.

A transaction is one database transaction: ids are assigned first so every `urn:uuid:` / `urn:oid:`
fullUrl (and conditional reference) can be rewritten in every reference of every entry, then entries
run in the order R4 prescribes (DELETE, POST, PUT/PATCH, then GET after commit). Any failing entry
fails the whole Bundle and nothing is written. A batch runs each entry on its own."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from typing import Any

import orjson
from sqlalchemy import Connection

from fhir_node.bundles import bundle
from fhir_node.interactions import history, read, search, write
from fhir_node.interactions.incoming import ID_PATTERN, check_resource, parse_query
from fhir_node.interactions.patch import patch, patch_in
from fhir_node.node import Node
from fhir_node.outcome import FHIRError, Issue, fail, operation_outcome
from fhir_node.registry import kind, require
from fhir_node.search.limits import Limits
from fhir_node.security.access import current
from fhir_node.store import repository
from fhir_node.store.batch import batched
from fhir_node.store.repository import Version, instant

#: What a transaction decided from the database before the write lock: each entry's (target, matched),
#: and the resolution of each conditional reference.
Decisions = tuple[list[tuple[str | None, bool]], dict[str, str]]
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_CONDITIONAL_REF = re.compile(r"([A-Z][A-Za-z]+)\?(.+)")
_ORED = 100  # conditional creates asked in one query (the SQL stays far below SQLite's depth limit)


@dataclass
class Entry:
    """One Bundle entry's request, parsed: `res_id` is the URL's id, `query` its search criteria."""

    index: int
    method: str
    res_type: str | None
    res_id: str | None
    tail: list[str]
    query: str
    url: str
    resource: Any
    full_url: str | None
    if_none_exist: str | None
    if_match: str | None
    target: str | None = None  # the id this entry writes, once resolved
    matched: bool = False  # a conditional create that found its match: nothing is written
    fresh: str = field(default_factory=repository.new_id)  # the id it creates, if it creates one
    prepared: Any = None  # the resource (or JSON Patch) to write: references resolved, validated

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


def process(node: Node, base: str, body: Any, representation: bool) -> bytes:
    """The response Bundle for a posted transaction or batch; any other Bundle type is a 400."""
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise fail(400, "invalid", "POST to the base takes a Bundle of type transaction or batch", "resourceType")
    btype = body.get("type")
    if btype not in ("transaction", "batch"):
        raise fail(
            400, "invalid", f"Bundle.type must be transaction or batch to be processed, not '{btype}'", "Bundle.type"
        )
    raw = body.get("entry", [])
    if not isinstance(raw, list):
        raise fail(400, "structure", "Bundle.entry must be an array", "Bundle.entry")
    if len(raw) > node.settings.max_bundle_entries:
        raise fail(
            413,
            "too-costly",
            f"The Bundle has {len(raw)} entries; this node takes at most {node.settings.max_bundle_entries}",
            "Bundle.entry",
        )
    record = current().record
    if record is not None:
        record.interaction = btype
    if btype == "transaction":
        responses = _transaction(node, base, [_parse_entry(i, e, base) for i, e in enumerate(raw)], representation)
    else:
        responses = [_batch_entry(node, base, i, e, representation) for i, e in enumerate(raw)]
    return bundle(f"{btype}-response", responses, {})


def _parse_entry(index: int, raw: Any, base: str) -> Entry:
    where = f"Bundle.entry[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
        raise fail(400, "required", f"{where} needs a request (method and url)", f"{where}.request")
    req = raw["request"]
    method, url = req.get("method"), req.get("url")
    if method not in _ORDER or not isinstance(url, str) or not url:
        raise fail(
            400,
            "value",
            f"{where}.request needs a method (GET, POST, PUT, PATCH, DELETE) and a url",
            f"{where}.request",
        )
    if url.startswith(base + "/"):
        url = url[len(base) + 1 :]
    path, _, query = url.partition("?")
    parts = [p for p in path.split("/") if p]
    res_type = parts[0] if parts else None
    res_id = parts[1] if len(parts) > 1 and not parts[1].startswith("_") else None
    if method in ("POST", "PUT", "PATCH", "DELETE"):
        if res_type is None:
            raise fail(400, "value", f"{where}.request.url must name a resource type", f"{where}.request.url")
        kind(res_type)
        needs_id_or_query = method != "POST"
        if needs_id_or_query and not (res_id or query):
            raise fail(400, "value", f"{where}: {method} needs [type]/[id] or [type]?criteria", f"{where}.request.url")
        if res_id is not None and not ID_PATTERN.fullmatch(res_id):
            raise fail(400, "value", f"{where}.request.url has an invalid id '{res_id}'", f"{where}.request.url")
    return Entry(
        index,
        method,
        res_type,
        res_id,
        parts[2:],
        query,
        url,
        raw.get("resource"),
        raw.get("fullUrl"),
        req.get("ifNoneExist"),
        req.get("ifMatch"),
    )


def _transaction(node: Node, base: str, entries: list[Entry], representation: bool) -> list[bytes]:
    """Ids, references and validation are worked out first, from a snapshot and without the write lock,
    so a big Bundle holds it only to write. Under the lock the plan is checked against what others wrote
    meanwhile (conditional matches, conditional references); if it changed, it is made again there."""
    limits = node.limits
    enforce = node.settings.enforce_profiles
    with node.db.read() as conn:
        plan = _prepare(conn, entries, limits, enforce)
    results: dict[int, bytes] = {}
    with write.transaction(node) as conn:
        for t in sorted({e.res_type for e in entries if e.method not in ("GET", "HEAD") and e.res_type}):
            node.db.lock(conn, f"write:{t}")
        if not _still_holds(conn, entries, limits, plan):
            _prepare(conn, entries, limits, enforce)
        with batched(conn):
            _foresee(conn, entries)
            for e in sorted(entries, key=lambda e: (_ORDER.get(e.method, 1), e.index)):
                if e.method not in ("GET", "HEAD"):
                    results[e.index] = _at(e, _write_entry, conn, e, representation, enforce)
        for e in entries:  # last, inside the transaction: they see its writes, and their failure undoes them
            if e.method in ("GET", "HEAD"):
                results[e.index] = _at(e, _get_entry, node, base, e)
    return [results[e.index] for e in entries]


def _prepare(conn: Connection, entries: list[Entry], limits: Limits, enforce: bool) -> Decisions:
    """Every write entry's target and its resource with references resolved and validated (`prepared`);
    returns the decisions that depended on the database."""
    ids = _assign_ids(conn, entries, limits)
    resolved: dict[str, str] = {}
    for e in entries:
        if e.method not in ("POST", "PUT", "PATCH"):
            continue
        prepared = _body(e)
        if prepared is not None:
            prepared = _at(e, _rewrite, conn, e, prepared, ids, resolved, limits)
        if e.method == "PUT" and isinstance(prepared, dict) and e.query:
            prepared = {**prepared, "id": e.target}
        if e.method in ("POST", "PUT"):
            require(kind(e.res_type or ""), "create" if e.method == "POST" else "update")
        if e.method == "POST" and not e.matched:
            prepared = _at(e, partial(check_resource, enforce_profiles=enforce), prepared, e.res_type)
        elif e.method == "PUT":
            prepared = _at(e, partial(check_resource, enforce_profiles=enforce), prepared, e.res_type, e.target)
        e.prepared = prepared
    return _targets(entries), resolved


def _foresee(conn: Connection, entries: list[Entry]) -> None:
    """Let the domain rules ask at once what they would ask entry by entry; not when an entry changes a
    stored Patient, as their answers would then move during the writes."""
    if any(e.res_type == "Patient" and e.method in ("PUT", "PATCH", "DELETE") for e in entries):
        return
    writes = [(e.res_type or "", e.prepared) for e in entries if e.method in ("POST", "PUT") and not e.matched]
    write.foresee(conn, [(res_type, r) for res_type, r in writes if isinstance(r, dict)])


def _still_holds(conn: Connection, entries: list[Entry], limits: Limits, plan: Decisions) -> bool:
    """Whether the decisions `_prepare` took still hold on `conn`: the same targets and matches, and each
    conditional reference it resolved still matching that one resource. Only those are queried again (no
    walk over the bodies: `plan` names the references); a reference that no longer resolves is reported
    by the `_prepare` that follows, naming its entry."""
    targets, resolved = plan
    _assign_ids(conn, entries, limits)
    if _targets(entries) != targets:
        return False
    for ref, was in resolved.items():
        conditional = _CONDITIONAL_REF.fullmatch(ref)
        assert conditional is not None
        res_type, query = conditional.groups()
        found = search.matching(conn, res_type, query, limits)
        if len(found) != 1 or f"{res_type}/{found[0]}" != was:
            return False
    return True


def _body(e: Entry) -> Any:
    """What a write entry carries: its resource, or for PATCH the JSON Patch its Binary holds."""
    return _at(e, _patch_document, e) if e.method == "PATCH" else e.resource


def _targets(entries: list[Entry]) -> list[tuple[str | None, bool]]:
    return [(e.target, e.matched) for e in entries]


def _at(e: Entry, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one entry's step; its error names the entry (and rolls the whole transaction back)."""
    try:
        return fn(*args)
    except FHIRError as exc:
        raise _located(exc, e) from None


def _assign_ids(conn: Connection, entries: list[Entry], limits: Limits) -> dict[str, str]:
    """Decide which id each write lands on (new, matched, or given) and map fullUrls to `Type/id`."""
    ids: dict[str, str] = {}
    seen: dict[tuple[str, str], int] = {}
    conditions: dict[tuple[str, str], int] = {}
    unmatched = _unmatched(conn, entries, limits)
    for e in entries:
        if e.method in ("GET", "HEAD"):
            continue
        assert e.res_type is not None
        if e.method == "POST" and e.if_none_exist:
            # Both would see no match (ids are decided before anything is written) and both would create.
            criteria = (e.res_type, e.if_none_exist)
            if criteria in conditions:
                raise fail(
                    400,
                    "invalid",
                    f"{e.where} and Bundle.entry[{conditions[criteria]}] conditionally "
                    f"create the same {e.res_type} ({e.if_none_exist})",
                    f"{e.where}.request.ifNoneExist",
                )
            conditions[criteria] = e.index
        if e.index in unmatched:
            e.target, e.matched = e.fresh, False
        else:
            e.target = _at(e, _target, conn, e, limits)
        if e.target is None:
            continue
        key = (e.res_type, e.target)
        if key in seen:
            raise fail(
                400, "invalid", f"{e.where} and Bundle.entry[{seen[key]}] both write {e.res_type}/{e.target}", e.where
            )
        seen[key] = e.index
        if e.full_url:
            if e.full_url in ids:
                raise fail(
                    400, "invalid", f"{e.where} repeats the fullUrl '{e.full_url}' (bdl-7)", f"{e.where}.fullUrl"
                )
            ids[e.full_url] = f"{e.res_type}/{e.target}"
    return ids


def _unmatched(conn: Connection, entries: list[Entry], limits: Limits) -> set[int]:
    """The conditional creates whose If-None-Exist matches nothing, found with one query for each type
    and parameter (up to _ORED values at a time): `identifier=a,b` matches what `identifier=a` or
    `identifier=b` matches, so an empty answer clears all of them. Entries of a non-empty answer, and
    those of another shape (several parameters, an escaped or encoded value, a criterion the node
    refuses: its entry reports that), are asked one by one by `_target`."""
    groups: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for e in entries:
        if e.method != "POST" or not isinstance(e.if_none_exist, str) or e.res_type is None:
            continue
        name, _, value = e.if_none_exist.lstrip("?").partition("=")
        if not value or any(c in value for c in "&,\\%"):
            continue
        try:
            search.conditions(e.res_type, e.if_none_exist, limits)
        except FHIRError:
            continue
        groups.setdefault((e.res_type, name), []).append((e.index, value))
    unmatched: set[int] = set()
    for (res_type, name), group in groups.items():
        for start in range(0, len(group), _ORED):
            chunk = group[start : start + _ORED]
            query = f"{name}={','.join(value for _, value in chunk)}"
            try:
                if len(chunk) > 1 and not search.any_match(conn, res_type, query):
                    unmatched.update(index for index, _ in chunk)
            except FHIRError:
                continue  # a value refused only when its SQL is built: its own entry will say so
    return unmatched


def _target(conn: Connection, e: Entry, limits: Limits) -> str | None:
    """The id an entry will write: assigned for a create (the same one each time this is asked), matched
    for conditional forms (None: no match)."""
    assert e.res_type is not None
    e.matched = False
    if e.method == "POST":
        if e.if_none_exist:
            found = write.unique_match(conn, e.res_type, e.if_none_exist, limits)
            if found:
                e.matched = True
                return found[0]
        return e.fresh
    if e.res_id:
        return e.res_id
    found = write.unique_match(conn, e.res_type, e.query, limits)
    if found:
        return found[0]
    if e.method == "PUT":
        given = e.resource.get("id") if isinstance(e.resource, dict) else None
        return str(given) if given else e.fresh
    return None


def _rewrite(
    conn: Connection, e: Entry, value: Any, ids: dict[str, str], resolved: dict[str, str], limits: Limits
) -> Any:
    """Every `reference` in the resource, nested ones too, with bundle-local and conditional ones resolved
    (conditional ones noted in `resolved`)."""
    if isinstance(value, list):
        return [_rewrite(conn, e, v, ids, resolved, limits) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _rewrite(conn, e, v, ids, resolved, limits) for k, v in value.items()}
    ref = out.get("reference")
    if isinstance(ref, str):
        out["reference"] = _resolve(conn, e, ref, ids, resolved, limits)
    return out


def _resolve(
    conn: Connection, e: Entry, ref: str, ids: dict[str, str], resolved: dict[str, str], limits: Limits
) -> str:
    if ref in ids:
        return ids[ref]
    if ref.startswith(("urn:uuid:", "urn:oid:")):
        raise fail(
            400, "not-found", f"{e.where}: reference '{ref}' names no fullUrl in this Bundle", f"{e.where}.resource"
        )
    conditional = _CONDITIONAL_REF.fullmatch(ref)
    if conditional:
        if ref in resolved:
            return resolved[ref]
        res_type, query = conditional.groups()
        kind(res_type)
        found = search.matching(conn, res_type, query, limits)
        if len(found) != 1:
            status = 404 if not found else 412
            raise fail(
                status,
                "not-found" if not found else "multiple-matches",
                f"{e.where}: conditional reference '{ref}' matches {len(found)} resources, not exactly one",
                f"{e.where}.resource",
            )
        resolved[ref] = f"{res_type}/{found[0]}"
        return resolved[ref]
    return ref


def _write_entry(conn: Connection, e: Entry, representation: bool, enforce: bool) -> bytes:
    """Write one prepared entry (`enforce` is for the patched resource: only it is validated here)."""
    assert e.res_type is not None
    if e.matched:
        found = repository.current(conn, e.res_type, e.target or "")
        assert found is not None
        return _response(200, write.existing(conn, found), representation)
    if e.method == "DELETE":
        require(kind(e.res_type), "delete")
        if e.target is None:
            return _response(204, None, False)
        gone = write.delete_in(conn, e.res_type, e.target, write.parse_if_match(e.if_match))
        return _response(204, gone, False)
    if e.method == "PATCH":
        require(kind(e.res_type), "patch")
        done = patch_in(conn, e.res_type, e.target or "", e.prepared, write.parse_if_match(e.if_match), enforce)
        return _response(done.status, done.version, representation)
    if e.method == "POST":
        done = write.create_in(conn, e.res_type, e.prepared, e.target)
        return _response(201, done.version, representation)
    done = write.update_in(conn, e.res_type, e.target or "", e.prepared, write.parse_if_match(e.if_match))
    return _response(done.status, done.version, representation)


def _patch_document(e: Entry) -> Any:
    """A PATCH entry carries its JSON Patch as a Binary (R4 3.1.0.11.6), base64 in `data`."""
    r = e.resource
    if not isinstance(r, dict) or r.get("resourceType") != "Binary" or "data" not in r:
        raise fail(
            400,
            "invalid",
            f"{e.where}: a PATCH entry's resource is a Binary holding a JSON Patch",
            f"{e.where}.resource",
        )
    try:
        return orjson.loads(base64.b64decode(r["data"], validate=True))
    except (ValueError, orjson.JSONDecodeError):
        raise fail(
            400, "structure", f"{e.where}: Binary.data is not a base64 JSON Patch", f"{e.where}.resource.data"
        ) from None


def _response(status: int, v: Version | None, representation: bool) -> bytes:
    response: dict[str, Any] = {"status": status_line(status)}
    if v is not None:
        response["etag"] = v.etag
        response["lastModified"] = instant(v.last_updated)
        if not v.deleted:
            response["location"] = f"{v.res_type}/{v.res_id}/_history/{v.version_id}"
    out = orjson.dumps({"response": response})
    if representation and v is not None and v.content is not None:
        return b'{"resource":' + v.content + b"," + out[1:]
    return out


def _outcome_response(exc: FHIRError) -> bytes:
    return orjson.dumps({"response": {"status": status_line(exc.status), "outcome": operation_outcome(exc.issues)}})


def status_line(status: int) -> str:
    """`201 Created`: the form Bundle.entry.response.status takes."""
    return f"{status} {HTTPStatus(status).phrase}"


def _get_entry(node: Node, base: str, e: Entry) -> bytes:
    """A read, vread, search or history entry, answered with the resource or Bundle it asks for."""
    params = parse_query(e.query)
    if e.res_type is None:
        body = search.search(node, base, None, params)
    elif e.res_id is None and not e.tail:
        body = (
            history.history(node, base, params, e.res_type)
            if e.url.startswith(f"{e.res_type}/_history")
            else search.search(node, base, e.res_type, params)
        )
    elif e.tail == ["_history"]:
        body = history.history(node, base, params, e.res_type, e.res_id)
    elif len(e.tail) == 2 and e.tail[0] == "_history":
        v = read.vread(node, e.res_type, e.res_id or "", e.tail[1])
        return _response(200, v, True)
    else:
        v = read.read(node, e.res_type, e.res_id or "")
        return _response(200, v, True)
    return b'{"resource":' + body + b',"response":{"status":"200 OK"}}'


def _batch_entry(node: Node, base: str, index: int, raw: Any, representation: bool) -> bytes:
    """One batch entry on its own: its failure (even a malformed request) is its own response."""
    try:
        e = _parse_entry(index, raw, base)
    except FHIRError as exc:
        return _outcome_response(exc)
    actions: dict[str, Callable[[], bytes]] = {
        "GET": lambda: _get_entry(node, base, e),
        "HEAD": lambda: _get_entry(node, base, e),
        "POST": lambda: _written(write.create(node, e.res_type or "", e.resource, e.if_none_exist), representation),
        "PUT": lambda: _written(
            write.update(node, e.res_type or "", e.res_id, e.resource, e.if_match)
            if e.res_id
            else write.conditional_update(node, e.res_type or "", e.query, e.resource, e.if_match),
            representation,
        ),
        "PATCH": lambda: _written(
            patch(node, e.res_type or "", e.res_id or "", _patch_document(e), e.if_match), representation
        ),
        "DELETE": lambda: _response(
            204,
            (
                write.delete(node, e.res_type or "", e.res_id, e.if_match)
                if e.res_id
                else write.conditional_delete(node, e.res_type or "", e.query, e.if_match)
            ),
            False,
        ),
    }
    try:
        return actions[e.method]()
    except FHIRError as exc:
        return _outcome_response(exc)


def _written(done: write.Written, representation: bool) -> bytes:
    return _response(done.status, done.version, representation)


def _located(exc: FHIRError, e: Entry) -> FHIRError:
    """Name the failing entry: `EpisodeOfCare.status` in entry 3 becomes `Bundle.entry[3].resource.status`."""
    if all(i.expression and i.expression[0].startswith("Bundle.") for i in exc.issues):
        return exc
    prefix = e.where
    issues = []
    for i in exc.issues:
        expr = tuple(
            x if x.startswith("Bundle.") else f"{prefix}.resource.{x.split('.', 1)[1]}" if "." in x else prefix
            for x in i.expression
        ) or (prefix,)
        issues.append(Issue(i.severity, i.code, f"{prefix}: {i.diagnostics}", expr))
    return FHIRError(exc.status, issues, exc.headers)

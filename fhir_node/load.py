"""`fhir-node load`: files and folders of resources into a node, over HTTP or straight into its database.

What it reads (folders recursively, in name order):
- transaction and batch Bundles: posted as they are, one file at a time;
- NDJSON (`.ndjson`, one resource per line): wrapped into transaction Bundles of `batch_size` lines, in
  file order, so name the files in reference order (`fhir-node synth` does);
- `collection` Bundles and single resources (`.json`): gathered over the whole run, sorted so referenced
  types come first (Organization, Practitioner, Patient, then the rest), and wrapped likewise, last.

Safe to run twice, by conditional create: every wrapped resource is a POST with `ifNoneExist` on its
business identifier (`identity`: its first identifier, or for an AuditEvent the BALP transaction
entity, the X-Request-Id), so a resource that exists already is matched, not duplicated. A resource
with no identifier but an id is written with PUT on that id instead (a stable client id); an
AuditEvent with neither is created anew on every run. `Type/id` references between the loaded
resources are rewritten to the ids the node assigned.

The summary counts distinct resources: created; unchanged (it existed with the same content);
updated (it existed with other content, which a PUT on the matched id then replaced, or a Bundle's
own PUT); failed, with the node's reason. A transaction that fails fails whole; for the loader's own
Bundles, the failing entry is set aside and the rest is sent again.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import orjson

from fhir_node.arguments import positive
from fhir_node.rules.billing import BILLING_PERIOD

#: Types written first when wrapping loose resources, so references point at what exists already.
REFERENCE_ORDER = ("Organization", "Practitioner", "Patient", "EpisodeOfCare", "Consent")
_BALP_TRANSACTION = "XrequestId"
_ENTRY_INDEX = re.compile(r"^Bundle\.entry\[(\d+)\]")
_LOCAL_REF = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})")
_SERVER_META = ("versionId", "lastUpdated")
_URL_SAFE = re.compile(r"[A-Za-z0-9_.~:/-]*")  # what quote(..., safe=":/") leaves as it is


def identity(resource: dict[str, Any]) -> str | None:
    """Search criteria that find this resource again by its business identifier (for `ifNoneExist`)."""
    if resource.get("resourceType") == "AuditEvent":
        for entity in resource.get("entity", []):
            ident = entity.get("what", {}).get("identifier", {})
            if entity.get("type", {}).get("code") == _BALP_TRANSACTION and ident.get("value"):
                return "entity:identifier=" + _token(ident)
        return None
    for ident in resource.get("identifier", []) if isinstance(resource.get("identifier"), list) else []:
        if isinstance(ident, dict) and ident.get("value"):
            return "identifier=" + _token(ident)
    return None


def _token(ident: dict[str, Any]) -> str:
    """`system|value`, URL-encoded for a query string (most values need no encoding: skip the work)."""
    value = _quoted(str(ident["value"]))
    return f"{_quoted(ident['system'])}|{value}" if ident.get("system") else value


def _quoted(text: str) -> str:
    return text if _URL_SAFE.fullmatch(text) else quote(text, safe=":/")


# --- where Bundles go ---------------------------------------------------------------------------------


@dataclass
class Answer:
    """A posted Bundle's answer: the response Bundle, or the error's status and OperationOutcome."""

    status: int
    body: dict[str, Any]


class Target(Protocol):
    """Where Bundles are posted: a node over HTTP, or its database in-process."""

    def post(self, bundle: bytes) -> Answer: ...

    def close(self) -> None: ...


class HttpTarget:
    """POST to the base of a running node (httpx, a keep-alive connection per Bundle on its way)."""

    def __init__(self, base: str, timeout: float = 300.0) -> None:
        import httpx

        self.base = base.rstrip("/")
        self.client = httpx.Client(timeout=timeout)

    def post(self, bundle: bytes) -> Answer:
        headers = {
            "Content-Type": "application/fhir+json",
            "Accept": "application/fhir+json",
            "Prefer": "return=representation",
        }
        response = self.client.post(self.base, content=bundle, headers=headers)
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = _outcome(f"HTTP {response.status_code}: {response.text[:200]}")
        return Answer(response.status_code, body)

    def close(self) -> None:
        self.client.close()


class DatabaseTarget:
    """The node's own Bundle processing on a database URL: same checks and rows as over HTTP."""

    def __init__(self, database_url: str) -> None:
        from fhir_node.node import Node
        from fhir_node.settings import Settings

        self.node = Node.from_settings(Settings(database_url=database_url))
        self.base = self.node.settings.base_url or "http://localhost/fhir"

    def post(self, bundle: bytes) -> Answer:
        from fhir_node.interactions.bundle import process
        from fhir_node.outcome import FHIRError, operation_outcome
        from fhir_node.rules.pseudonym import shown

        try:  # the answer as the operator gets it over HTTP: SSINs in clear
            return Answer(200, orjson.loads(shown(process(self.node, self.base, orjson.loads(bundle), True))))
        except FHIRError as exc:
            return Answer(exc.status, operation_outcome(exc.issues))

    def close(self) -> None:
        """On PostgreSQL, statistics for the planner first: right after a bulk load, until autovacuum's
        first ANALYZE (up to a minute later), searches would run with plans guessed without them."""
        db = self.node.db
        if not db.is_sqlite:
            with db.engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE")
        db.dispose()


def _outcome(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception", "diagnostics": text}],
    }


# --- the summary ---------------------------------------------------------------------------------------


@dataclass
class Summary:
    """Distinct resources by outcome, and one line per failure (where, and the node's reason)."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    seconds: float = 0.0

    def count(self, key: str | None, outcome: str) -> None:
        """Record an outcome once per resource (`Type/id`): a resource repeated in several Bundles counts once."""
        if key is not None:
            if key in self.seen:
                return
            self.seen.add(key)
        setattr(self, outcome, getattr(self, outcome) + 1)

    def fail(self, where: str, reason: str, entries: int = 1) -> None:
        self.failed += entries
        self.failures.append(f"{where}: {reason}")

    @property
    def total(self) -> int:
        return self.created + self.updated + self.unchanged + self.failed

    def report(self) -> str:
        rate = self.total / self.seconds if self.seconds else 0.0
        lines = [
            f"fhir-node load: {self.total} resources in {self.seconds:.1f} s ({rate:.0f}/s): created {self.created}, "
            f"updated {self.updated}, unchanged {self.unchanged}, failed {self.failed}"
        ]
        lines += [f"  failed: {f}" for f in self.failures]
        return "\n".join(lines)


# --- reading the inputs --------------------------------------------------------------------------------


def files(paths: Iterable[Path]) -> list[Path]:
    """The JSON and NDJSON files under `paths` (folders recursively, in name order)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".json", ".ndjson"))
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return out


@dataclass
class _Sent:
    """A wrapped Bundle on its way: its answer, what to do with it, and the files' `Type/id`s it defines."""

    answer: Future[Answer]
    then: Callable[[Answer], None]
    defines: frozenset[str]


class Loader:
    """Feeds files to a Target and keeps the Summary; `advance(n)` is told of every n bytes read.

    `in_flight` wrapped Bundles may be on their way at once: the node validates one while the loader
    prepares the next and the previous answer travels (one at a time, each side waited for the other:
    ~1.3 ms per resource of which ~0.2 the loader's). Answers are settled in the order sent, and a Bundle
    that refers to a resource defined by one still on its way waits for its answer (the node's id); one
    with a conditional reference (`Patient?identifier=...`), which the node resolves by a search, waits
    for every Bundle on its way (sent together, the later one may reach the node first)."""

    def __init__(
        self, target: Target, batch_size: int = 500, advance: Callable[[int], None] | None = None, in_flight: int = 1
    ) -> None:
        self.target = target
        self.batch_size = batch_size
        self.advance = advance or (lambda n: None)
        self.summary = Summary()
        self.resolved: dict[str, str] = {}  # `Type/id` in the files -> `Type/id` on the node
        self.in_flight = in_flight
        self._sent: deque[_Sent] = deque()

    def run(self, paths: Iterable[Path]) -> Summary:
        started = time.perf_counter()
        loose: list[tuple[str, dict[str, Any]]] = []
        with ThreadPoolExecutor(self.in_flight, thread_name_prefix="load") as self._posting:
            for path in files(paths):
                if path.suffix == ".ndjson":
                    self._ndjson(path)
                else:
                    loose += self._json(path)
                    self.advance(path.stat().st_size)
            loose.sort(key=lambda item: _rank(item[1]))
            for start in range(0, len(loose), self.batch_size):
                self._wrapped(loose[start : start + self.batch_size])
            self._wait_for()
        self.summary.seconds = time.perf_counter() - started
        return self.summary

    def _send(self, bundle: bytes, then: Callable[[Answer], None], defines: frozenset[str]) -> None:
        """Post `bundle` and have `then` settle its answer, once `in_flight` others have been settled."""
        while len(self._sent) >= self.in_flight:
            self._settle_oldest()
        self._sent.append(_Sent(self._posting.submit(self.target.post, bundle), then, defines))

    def _settle_oldest(self) -> None:
        sent = self._sent.popleft()
        sent.then(sent.answer.result())

    def _wait_for(self, refers: set[str] | None = None) -> None:
        """Settle, oldest first, what is on its way: all of it, or until none of it defines one of `refers`."""
        while self._sent and (refers is None or any(not sent.defines.isdisjoint(refers) for sent in self._sent)):
            self._settle_oldest()

    def _json(self, path: Path) -> list[tuple[str, dict[str, Any]]]:
        """A transaction or batch is posted now; single resources and collections are returned for wrapping."""
        try:
            data = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            self.summary.fail(str(path), f"not JSON: {exc}")
            return []
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            self.summary.fail(str(path), "not a FHIR resource (no resourceType)")
            return []
        if data["resourceType"] != "Bundle" or data.get("type") not in ("transaction", "batch", "collection"):
            return [(str(path), data)]
        if data["type"] == "collection":
            entries = data.get("entry", [])
            return [(f"{path} entry[{i}]", e["resource"]) for i, e in enumerate(entries) if "resource" in e]
        self._as_is(str(path), data)
        return []

    def _ndjson(self, path: Path) -> None:
        batch: list[tuple[str, dict[str, Any]]] = []
        with path.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                self.advance(len(line))
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    resource = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    self.summary.fail(where, f"not JSON: {exc}")
                    continue
                if not isinstance(resource, dict) or "resourceType" not in resource:
                    self.summary.fail(where, "not a FHIR resource (no resourceType)")
                    continue
                batch.append((where, resource))
                if len(batch) == self.batch_size:
                    self._wrapped(batch)
                    batch = []
        if batch:
            self._wrapped(batch)

    # --- Bundles as they are ----------------------------------------------------------------------------

    def _as_is(self, where: str, bundle: dict[str, Any]) -> None:
        entries = bundle.get("entry", [])
        self._wait_for()
        answer = self.target.post(orjson.dumps(bundle))
        if answer.status >= 400 or answer.body.get("resourceType") != "Bundle":
            self.summary.fail(where, _reason(answer), max(len(entries), 1))
            return
        self._settle(where, entries, answer.body.get("entry", []), {})

    # --- loose resources, wrapped -----------------------------------------------------------------------

    def _wrapped(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        """Post `batch` as one transaction; a failing entry is set aside and the rest sent again.

        A resource repeated in the batch (same business identifier) is sent once, its references pointed
        at that one entry: the node would create it twice within one transaction."""
        urls: dict[str, str] = {}  # `Type/id` in the files -> the entry's fullUrl
        by_identity: dict[str, str] = {}  # ifNoneExist criteria -> the fullUrl of the entry that has them
        kept: list[tuple[str, dict[str, Any], str]] = []
        for where, resource in batch:
            criteria = identity(resource)
            key = f"{resource['resourceType']}?{criteria}" if criteria else ""
            url = by_identity.get(key, "")
            if not url:
                url = f"urn:uuid:{uuid.uuid4()}"
                kept.append((where, resource, url))
                if key:
                    by_identity[key] = url
            if "id" in resource:
                urls[f"{resource['resourceType']}/{resource['id']}"] = url
        refers: set[str] = set()
        for _, resource, _ in kept:
            _references(resource, refers)
        conditional = any("?" in ref for ref in refers)  # the node searches for it: all on its way must land
        self._wait_for(None if conditional else refers - urls.keys())
        wrapped = [self._entry(resource, url, urls) for _, resource, url in kept]
        wheres = [where for where, _, _ in kept]
        if wrapped:
            self._send(
                _transaction(wrapped), lambda answer: self._answered(answer, wrapped, wheres, urls), frozenset(urls)
            )

    def _answered(self, answer: Answer, wrapped: list[dict[str, Any]], wheres: list[str], urls: dict[str, str]) -> None:
        """Settle a wrapped Bundle's answer; while an entry fails, set it aside and send the rest again."""
        while True:
            if answer.status < 400 and answer.body.get("resourceType") == "Bundle":
                self._settle("", wrapped, answer.body.get("entry", []), urls, wheres)
                return
            bad = _failing_entry(answer)
            if bad is None or bad >= len(wrapped):
                for where in wheres:
                    self.summary.fail(where, _reason(answer))
                return
            self.summary.fail(wheres[bad], _reason(answer, strip_entry=True))
            del wrapped[bad], wheres[bad]
            if not wrapped:
                return
            answer = self.target.post(_transaction(wrapped))

    def _entry(self, resource: dict[str, Any], url: str, local: dict[str, str]) -> dict[str, Any]:
        body = _rewrite(resource, local, self.resolved)
        criteria = identity(body)
        if criteria is None and "id" in body and body["resourceType"] != "AuditEvent":
            request = {"method": "PUT", "url": f"{body['resourceType']}/{body['id']}"}
            return {"fullUrl": url, "resource": body, "request": request}
        body = {k: v for k, v in body.items() if k != "id"}
        request = {"method": "POST", "url": body["resourceType"]}
        if criteria:
            request["ifNoneExist"] = criteria
        return {"fullUrl": url, "resource": body, "request": request}

    # --- reading the answers ----------------------------------------------------------------------------

    def _settle(
        self,
        where: str,
        sent: list[dict[str, Any]],
        responses: list[dict[str, Any]],
        sources: dict[str, str],
        wheres: list[str] | None = None,
    ) -> None:
        """Count each entry's outcome; a matched resource whose content differs is replaced (PUT).
        `sources` maps the files' `Type/id` to fullUrls: they are resolved to what the node wrote."""
        assigned = {}  # fullUrl -> `Type/id` the node wrote
        for entry, response in zip(sent, responses, strict=False):
            key = _key(response)
            if key and entry.get("fullUrl"):
                assigned[entry["fullUrl"]] = key
        self.resolved.update((source, assigned[url]) for source, url in sources.items() if url in assigned)
        replace = []
        for i, (entry, response) in enumerate(zip(sent, responses, strict=False)):
            status = str(response.get("response", {}).get("status", ""))[:3]
            key = _key(response)
            here = wheres[i] if wheres else f"{where} entry[{i}]"
            method = entry.get("request", {}).get("method")
            if status == "201":
                self.summary.count(key, "created")
            elif status == "200" and method == "POST" and key and "resource" in response:
                submitted = _rewrite(entry.get("resource", {}), assigned, {})
                if _same(submitted, response["resource"]):
                    self.summary.count(key, "unchanged")
                elif key not in self.summary.seen:
                    replace.append((here, key, submitted))
            elif status in ("200", "204"):
                self.summary.count(key, "updated" if method in ("PUT", "PATCH", "DELETE") else "unchanged")
            else:
                self.summary.fail(
                    here, _reason(Answer(int(status or 500), response.get("response", {}).get("outcome", {})))
                )
        if replace:
            self._replace(replace)

    def _replace(self, replace: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Existing resources whose content differs from the files: the files' version wins (PUT)."""
        entries = []
        for _, key, resource in replace:
            body = {**resource, "id": key.split("/")[1]}
            entries.append({"resource": body, "request": {"method": "PUT", "url": key}})
        answer = self.target.post(_transaction(entries))
        for here, key, _ in replace:
            if answer.status < 400:
                self.summary.count(key, "updated")
            else:
                self.summary.seen.add(key)
                self.summary.fail(here, "differs from the stored resource, and replacing it failed: " + _reason(answer))


def _rank(resource: dict[str, Any]) -> int:
    rt = resource.get("resourceType")
    return REFERENCE_ORDER.index(rt) if rt in REFERENCE_ORDER else len(REFERENCE_ORDER)


def _transaction(entries: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})


def _references(value: Any, found: set[str]) -> None:
    """Every `reference` in `value`, added to `found`."""
    if isinstance(value, list):
        for v in value:
            _references(v, found)
    elif isinstance(value, dict):
        for k, v in value.items():
            if k == "reference" and isinstance(v, str):
                found.add(v)
            else:
                _references(v, found)


def _rewrite(value: Any, *maps: dict[str, str]) -> Any:
    """A copy of `value` with every `reference` found in one of `maps` replaced."""
    if isinstance(value, list):
        return [_rewrite(v, *maps) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _rewrite(v, *maps) for k, v in value.items()}
    ref = out.get("reference")
    if isinstance(ref, str):
        for m in maps:
            if ref in m:
                out["reference"] = m[ref]
                break
    return out


def _same(submitted: dict[str, Any], stored: dict[str, Any]) -> bool:
    """Equal content, ignoring id and the server's meta; a conditional reference matches any target of its type."""
    return _equal(_strip(submitted), _strip(stored))


def _strip(resource: dict[str, Any]) -> dict[str, Any]:
    """What the sender decides: without the id, the server's meta and the billing period it computes."""
    out = {k: v for k, v in resource.items() if k != "id"}
    if isinstance(out.get("extension"), list):
        out["extension"] = [e for e in out["extension"] if not (isinstance(e, dict) and e.get("url") == BILLING_PERIOD)]
        if not out["extension"]:
            del out["extension"]
    meta = {k: v for k, v in out.pop("meta", {}).items() if k not in _SERVER_META}
    return {**out, "meta": meta} if meta else out


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return False
        ref = a.get("reference")
        if isinstance(ref, str) and "?" in ref and isinstance(b.get("reference"), str):
            if b["reference"].split("/")[0] != ref.split("?")[0]:
                return False
            return all(_equal(a[k], b[k]) for k in a if k != "reference")
        return all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _key(response: dict[str, Any]) -> str | None:
    """`Type/id` from an entry response's location (`Type/id/_history/n`) or its resource."""
    location = response.get("response", {}).get("location")
    if isinstance(location, str):
        match = _LOCAL_REF.match(location.split("/fhir/")[-1])
        if match:
            return f"{match.group(1)}/{match.group(2)}"
    resource = response.get("resource")
    if isinstance(resource, dict) and "id" in resource:
        return f"{resource['resourceType']}/{resource['id']}"
    return None


def _failing_entry(answer: Answer) -> int | None:
    for issue in answer.body.get("issue", []):
        for expression in issue.get("expression", []):
            match = _ENTRY_INDEX.match(expression)
            if match:
                return int(match.group(1))
    return None


def _reason(answer: Answer, strip_entry: bool = False) -> str:
    """The node's diagnostics, with the HTTP status: `422 processing: ... [EpisodeOfCare.type]`."""
    issues = answer.body.get("issue", []) if answer.body.get("resourceType") == "OperationOutcome" else []
    parts = []
    for issue in issues or [{"code": "exception", "diagnostics": "no OperationOutcome in the answer"}]:
        text = str(issue.get("diagnostics", ""))
        if strip_entry:
            text = re.sub(r"^Bundle\.entry\[\d+\]: ", "", text)
        where = ", ".join(issue.get("expression", []))
        parts.append(f"{issue.get('code')}: {text}" + (f" [{where}]" if where else ""))
    return f"{answer.status} " + "; ".join(parts)


def load(
    paths: Iterable[Path],
    target: Target,
    batch_size: int = 500,
    advance: Callable[[int], None] | None = None,
    in_flight: int = 1,
) -> Summary:
    """Load `paths` into `target`; the caller closes the target."""
    return Loader(target, batch_size, advance, in_flight).run(paths)


def main(args: argparse.Namespace) -> int:
    """`fhir-node load PATH... [--url BASE | --database URL]`: exit 1 when anything failed."""
    from tqdm import tqdm

    paths = [Path(p) for p in args.paths]
    try:
        total = sum(p.stat().st_size for p in files(paths))
    except FileNotFoundError as exc:
        print(f"fhir-node load: {exc}", file=sys.stderr)
        return 2
    target: Target = DatabaseTarget(args.database) if args.database else HttpTarget(args.url)
    try:
        with tqdm(total=total, unit="B", unit_scale=True, desc="loading", disable=args.quiet) as bar:
            in_flight = 1 if args.database else args.in_flight  # in process, the GIL would serialise them anyway
            summary = load(paths, target, args.batch_size, bar.update, in_flight)
    finally:
        target.close()
    print(summary.report())
    return 1 if summary.failed else 0


def add_parser(sub: Any) -> None:
    """Register `load` on the `fhir-node` command."""
    p = sub.add_parser("load", help="load resources, Bundles and NDJSON into a node (safe to run twice)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (.json, .ndjson)")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--url", default="http://127.0.0.1:8080/fhir", help="FHIR base of a running node (default %(default)s)"
    )
    where.add_argument("--database", metavar="URL", help="write straight into this database (SQLAlchemy URL)")
    p.add_argument(
        "--batch-size",
        type=positive(int),
        default=500,
        help="resources per transaction when wrapping (default %(default)s)",
    )
    p.add_argument(
        "--in-flight",
        type=positive(int),
        default=2,
        metavar="N",
        help="with --url, wrapped Bundles sent before the first answer is awaited (default %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=main)

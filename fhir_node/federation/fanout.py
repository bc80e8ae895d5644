"""Ask every node the same FHIR search at once and merge the answers: entries (each `fullUrl` on its own node's
base, so ids never collide; paging followed to the end or to a maximum) or counts (summed, then small counts
suppressed, so no node's own small count ever shows). A node that is down, slow or answers garbage is reported
and leaves the others' answer standing."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx

from fhir_node import __version__
from fhir_node.federation.backend_services import TokenSource
from fhir_node.federation.calls import CONNECTION_ERRORS, Failure, json_body, send, why
from fhir_node.federation.nodes import Node
from fhir_node.rules import small_cells

#: A search relative to a node's base: `Type?params`, `Type/_history?...`, or `?params` (all types).
_QUERY = re.compile(r"(?:[A-Z][A-Za-z]+(?:/[A-Za-z0-9_$.\-]+)*)?(?:\?.*)?", re.DOTALL)


class QueryError(ValueError):
    """The query cannot be sent to nodes (a usage error, not a node's failure)."""


def parse_query(query: str) -> tuple[str, bool]:
    """The search as sent to every node, and whether it is a count (`_summary=count`)."""
    query = query.strip()
    if not query or not _QUERY.fullmatch(query) or "/.." in query.split("?", 1)[0]:
        raise QueryError(
            f"{query!r} is not a search relative to a node's base, like 'EpisodeOfCare?status=active&_summary=count'"
        )
    params = parse_qsl(urlsplit(query).query, keep_blank_values=True)
    return query, ("_summary", "count") in params


@dataclass(frozen=True)
class NodeReport:
    """How one node answered: `status` is the HTTP status of the answer that decided (None without one)."""

    name: str
    ok: bool
    status: int | None
    error: str | None
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "status": self.status,
            "error": self.error,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class Answer:
    """The merged answer. A count has `total` (None when suppressed) and no entries; a search has `entries`
    as (node name, entry) in the nodes' order, each node's in its own order."""

    query: str
    nodes: list[NodeReport]
    is_count: bool
    total: int | None = None
    suppressed: bool = False
    entries: tuple[tuple[str, dict[str, Any]], ...] = ()

    @property
    def complete(self) -> bool:
        """Every node answered."""
        return all(node.ok for node in self.nodes)

    def as_json(self) -> dict[str, Any]:
        """`{nodes, total}` for a count, `{nodes, entries}` for a search."""
        nodes = [node.as_json() for node in self.nodes]
        if self.is_count:
            return {"nodes": nodes, "total": self.total}
        return {"nodes": nodes, "entries": [entry for _, entry in self.entries]}

    def bundle(self) -> dict[str, Any]:
        """The merged answer as a searchset Bundle; a suppressed count masked as a node masks its own."""
        if self.is_count:
            total = small_cells.withheld() if self.suppressed else small_cells.bundle_total(self.total, None)
            return {"resourceType": "Bundle", "type": "searchset", **total}
        return {"resourceType": "Bundle", "type": "searchset", "entry": [entry for _, entry in self.entries]}


class Federation:
    """Connections and tokens for a set of nodes, kept across queries:

    ```python
    async with Federation(load_nodes("nodes.yaml")) as federation:
        answer = await federation.search("EpisodeOfCare?status=active&_summary=count")
    ```
    `timeout`: seconds for a node's whole answer (token, retries and pages included) unless its entry in the nodes
    file sets one; `retries`: further tries after a 429, a 503 or a failed connection; `suppress_below`: a summed
    count below this, zero included, is withheld (`small_cells.suppressed`, the nodes' own rule).
    """

    def __init__(
        self, nodes: Sequence[Node], *, timeout: float = 30.0, retries: int = 3, suppress_below: int = 5
    ) -> None:
        self.nodes = list(nodes)
        self.timeout = timeout
        self.retries = retries
        self.suppress_below = suppress_below
        self._tokens = {node.name: TokenSource(node, node.auth) for node in self.nodes if node.auth}
        self._client = httpx.AsyncClient(
            headers={"Accept": "application/fhir+json", "User-Agent": f"fhir-node-federate/{__version__}"},
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=4 * len(self.nodes) + 4),
        )

    async def __aenter__(self) -> Federation:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def search(self, query: str, max_entries: int | None = None) -> Answer:
        """Every node's answer to `query` (QueryError when it is not a search), merged. `max_entries`: follow a
        node's pages until it gave that many entries (default: to the end)."""
        query, is_count = parse_query(query)
        asked = await asyncio.gather(*(self._ask(node, query, is_count, max_entries) for node in self.nodes))
        reports = [report for report, _ in asked]
        if is_count:
            counts = [count for report, count in asked if report.ok]
            # A node that withheld its own small count (None) leaves no exact sum to publish.
            masked = None in counts
            total = sum(counts) if counts and not masked else None  # no node answered: nothing to sum
            suppressed = masked or (total is not None and small_cells.suppressed(total, self.suppress_below))
            return Answer(query, reports, True, None if suppressed else total, suppressed)
        entries = tuple((node.name, entry) for node, (_, got) in zip(self.nodes, asked, strict=True) for entry in got)
        return Answer(query, reports, False, entries=entries)

    async def _ask(self, node: Node, query: str, is_count: bool, max_entries: int | None) -> tuple[NodeReport, Any]:
        """(report, count or entries) for one node; failures become the report, never an exception."""
        start = time.monotonic()
        timeout = node.timeout or self.timeout
        status: int | None = None
        error: str | None = None
        got: Any = [] if not is_count else 0
        try:
            async with asyncio.timeout(timeout):
                if is_count:
                    got = await self._count(node, query, start + timeout)
                else:
                    got = await self._entries(node, query, start + timeout, max_entries)
                status = 200
        except Failure as exc:
            status, error = exc.status, exc.reason
        except (TimeoutError, httpx.TimeoutException):
            error = f"no answer within {timeout:g} s"
        except CONNECTION_ERRORS as exc:
            error = f"cannot connect: {exc or type(exc).__name__}"
        except Exception as exc:  # whatever else one node's answer did, the others' answer stands
            error = f"{type(exc).__name__}: {exc}"
        seconds = time.monotonic() - start
        return NodeReport(node.name, error is None, status, error, seconds), got

    async def _get(self, node: Node, url: str, deadline: float) -> dict[str, Any]:
        """A searchset Bundle from `url`, with the node's token; one fresh token when the node refuses it."""
        tokens = self._tokens.get(node.name)
        for last_try in (False, True):
            headers = {}
            if tokens:
                token = await tokens.get(self._client, deadline, self.retries)
                headers["Authorization"] = f"Bearer {token}"
            response = await send(
                lambda timeout, h=headers: self._client.get(url, headers=h, timeout=timeout), deadline, self.retries
            )
            if response.status_code == 401 and tokens and not last_try:
                tokens.forget(token)
                continue
            break
        if response.status_code != 200:
            raise Failure(why(response), response.status_code)
        body = json_body(response)
        if not (isinstance(body, dict) and body.get("resourceType") == "Bundle" and body.get("type") == "searchset"):
            raise Failure("the answer is not a FHIR searchset Bundle", response.status_code)
        return body

    async def _count(self, node: Node, query: str, deadline: float) -> int | None:
        """The node's count; None when the node withheld it as a small cell (its own suppression)."""
        bundle = await self._get(node, f"{node.url}/{query}", deadline)
        total = bundle.get("total")
        if total is None and small_cells.masked(bundle):
            return None
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise Failure("the count Bundle has no total", 200)
        return total

    async def _entries(self, node: Node, query: str, deadline: float, max_entries: int | None) -> list[dict[str, Any]]:
        """Every entry of every page (or the first `max_entries`), its fullUrl on the node's base."""
        url: str | None = f"{node.url}/{query}"
        seen: set[str] = set()
        entries: list[dict[str, Any]] = []
        while url is not None and (max_entries is None or len(entries) < max_entries):
            seen.add(url)
            bundle = await self._get(node, url, deadline)
            entries += [_on_node(node, entry) for entry in _list(bundle, "entry")]
            url = _next_page(node, url, bundle, seen)
        return entries[:max_entries]


def _list(bundle: dict[str, Any], element: str) -> list[Any]:
    value = bundle.get(element, [])
    if not isinstance(value, list):
        raise Failure(f"Bundle.{element} is not a list", 200)
    return value


def _on_node(node: Node, entry: Any) -> dict[str, Any]:
    """The entry with its fullUrl on the node's base (from the nodes file), whatever base the node believes in;
    an OperationOutcome about the search itself (mode `outcome`) as it came."""
    if isinstance(entry, dict) and isinstance(entry.get("search"), dict) and entry["search"].get("mode") == "outcome":
        return entry
    resource = entry.get("resource") if isinstance(entry, dict) else None
    if not isinstance(resource, dict):
        raise Failure("a Bundle entry has no resource", 200)
    kind, rid = resource.get("resourceType"), resource.get("id")
    if not (isinstance(kind, str) and isinstance(rid, str)):
        raise Failure("a Bundle entry's resource has no resourceType or id", 200)
    return {**entry, "fullUrl": f"{node.url}/{kind}/{rid}"}


def _next_page(node: Node, url: str, bundle: dict[str, Any], seen: set[str]) -> str | None:
    """The next page's URL; only on the node's own base (its token goes nowhere else), never one already read."""
    link = next(
        (x.get("url") for x in _list(bundle, "link") if isinstance(x, dict) and x.get("relation") == "next"), None
    )
    if link is None:
        return None
    target = urljoin(url, str(link))
    if not (target.startswith(f"{node.url}/") or target.startswith(f"{node.url}?")):
        raise Failure(f"the next page link leaves the node's base {node.url}: {target}", 200)
    if target in seen:
        raise Failure("the next page link goes back to a page already read", 200)
    return target

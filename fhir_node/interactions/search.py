"""search at type and system level: criteria to SQL, `_sort`, keyset paging with stable next/previous
links, `_total`, `_include`/`_revinclude`, `_summary`, `_elements`; conditional operations reuse it."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import cache, cached_property, lru_cache
from operator import itemgetter
from typing import Any
from urllib.parse import urlencode

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    FromClause,
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    false,
    func,
    or_,
    select,
    true,
)

from fhir_node.audit import trail
from fhir_node.bundles import bundle
from fhir_node.interactions.incoming import parse_query
from fhir_node.node import Node
from fhir_node.outcome import FHIRError, error, fail, operation_outcome
from fhir_node.registry import KINDS, kind
from fhir_node.rules.small_cells import bundle_total
from fhir_node.search import elements as shaping
from fhir_node.search import plans
from fhir_node.search.limits import Limits
from fhir_node.search.parse import VENDOR_TOTALS, Criterion, Parsed, SearchError, parse
from fhir_node.search.registry import registry
from fhir_node.search.sql import driver, named, named_param, probe
from fhir_node.security import policy
from fhir_node.security.rules import REDACTED_PARAMS
from fhir_node.store.database import unprepared
from fhir_node.store.ready import Ready
from fhir_node.store.schema import INDEX_TABLES, idx_reference, resources

#: Sort key columns per parameter type: ascending sorts on the lowest value, descending on the highest.
_SORT_COLUMNS = {
    "date": ("low", "high"),
    "string": ("value", "value"),
    "token": ("code", "code"),
    "number": ("value", "value"),
    "quantity": ("value", "value"),
    "uri": ("uri", "uri"),
    "reference": ("target_id", "target_id"),
}
_TOTAL_BOUND = 10_000
#: Text a URL's query carries as it is (RFC 3986 unreserved, as `urlencode` leaves it).
_URL_SAFE = re.compile(r"[A-Za-z0-9_.\-~]*")
#: Built once (see `sql.named`): a live resource.
_LIVE = resources.c.deleted == false()
#: A row's (type, id, version): what the audit trail keys a page's Patients by (`trail.patients_of`).
_VERSION = itemgetter(0, 1, 3)


@dataclass(frozen=True)
class Walk:
    """An index to walk in id order instead of scanning the type: its rows for the chosen criterion, and
    the other criteria on the resource row (`rest`), or, when the access policy adds no condition
    (`policy_free`), on the index row itself (`bare`: index rows exist only for live resources, so a count
    needs no resource row)."""

    table: Table
    condition: ColumnElement[bool]
    rest: ColumnElement[bool]
    chosen: Criterion
    policy_free: bool
    #: A resource has at most one row for the criterion: the walk meets each once, with no grouping by id.
    unique: bool

    def bare(self, parsed: Parsed, base: str) -> ColumnElement[bool]:
        """The other criteria on the index row (any refused under lenient handling was reported with `rest`)."""
        return and_(true(), *_probes(parsed, base, self.chosen, self.table, lambda exc, given: None))


@dataclass
class Page:
    """The query shape every page of one search shares; `walk`, when set, the index that finds it; `plan`,
    when set, the shape whose ready statement fetches it (see `search.plans`)."""

    parsed: dict[str, Parsed]
    base: str
    sort: list[tuple[str, bool, str]] = field(default_factory=list)  # (code, descending, param type)
    walk: Walk | None = None
    #: Per type, what the caller may see of it (the access policy's condition; None: everything).
    allowed: dict[str, ColumnElement[bool] | None] = field(default_factory=dict)
    plan: plans.Shape | None = None

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(self.parsed)

    @cached_property
    def where(self) -> ColumnElement[bool]:
        """Every criterion of every type, for scans, sorts and counts (built only when one needs it)."""
        return or_(*(_type_condition(t, p, self.base, self.allowed.get(t)) for t, p in self.parsed.items()))


def search(node: Node, base: str, res_type: str | None, params: list[tuple[str, str]], lenient: bool = False) -> bytes:
    """A `searchset` Bundle for one page of results."""
    reg = registry()
    node.limits.check(params)
    types = _types(res_type, params)
    parsed_by_type = {t: _parse(reg, t, params, lenient, keep=True) for t in types}
    parsed = parsed_by_type[types[0]]
    result = parsed.result
    count = _count(result, node)
    page = Page(parsed_by_type, base, _sort(parsed, types))
    trail.note_query(params)
    with node.db.read() as conn:
        _authorise(conn, page)
        if len(types) == 1 and not page.sort:
            reach = policy.shared(types[0], "s")
            page.plan = plans.shape(types[0], parsed, base, reach) if reach is not None else None
            if page.plan is None:
                page.walk = _walk(types[0], parsed, base, page.allowed.get(types[0]))
        if page.walk is None and page.plan is None:
            page.where  # noqa: B018 - built now, so a bad value is refused before anything is read
        return _answer(conn, reg, page, node, res_type, params, count)


def _answer(
    conn: Connection, reg: Any, page: Page, node: Node, res_type: str | None, params: list[tuple[str, str]], count: int
) -> bytes:
    """The page of results (and includes) of an authorised, parsed search."""
    base = page.base
    parsed = next(iter(page.parsed.values()))
    result = parsed.result
    summary = _single(result, "_summary")
    if summary not in (None, "true", "false", "text", "data", "count"):
        raise fail(400, "value", f"_summary must be true, false, text, data or count, not '{summary}'", "_summary")
    total_mode = _total_mode(result)
    contained = _single(result, "_contained")
    if contained not in (None, "false") or "_containedType" in result:
        raise fail(400, "not-supported", "Searching contained resources is not supported", "_contained")
    elements = [e.strip() for v in result.get("_elements", []) for e in v.split(",") if e.strip()]
    cursor = _decode_cursor(_single(result, "_cursor"), page)

    params = _used(params, page)
    if summary == "count" or count == 0:
        total = _count_all(conn, page)
        return bundle("searchset", [], {"self": _link(base, res_type, params, None)}, **_shown_total(total, node))
    rows, has_next, has_prev = _fetch(conn, page, cursor, count)
    total = _total(conn, page, total_mode, cursor, rows, has_next)
    shown = policy.shown_page(conn, page.types, rows)  # None: every row as stored
    if shown is None:
        unredacted: Iterable[Any] = rows
        matches: Iterable[Any] = rows
    else:
        unredacted = (r for r, (_, redacted) in zip(rows, shown, strict=True) if not redacted)
        matches = [(r[0], r[1], content) for r, (content, _) in zip(rows, shown, strict=True)]
    included = _includes(conn, reg, unredacted, result, base, node.limits)
    trail.note(conn, ((t, i) for t, i, _ in included), versioned=map(_VERSION, rows))

    links = {"self": _link(base, res_type, params, _single(result, "_cursor"))}
    if has_next:
        links["next"] = _link(base, res_type, params, _encode_cursor("n", rows[-1], page))
    if has_prev:
        links["previous"] = _link(base, res_type, params, _encode_cursor("p", rows[0], page))
    entries = _entries(base, matches, "match", summary, elements)
    entries += _entries(base, included, "include", summary, elements)
    if parsed.ignored:
        oo = orjson.dumps(operation_outcome(parsed.ignored))
        entries.append(b'{"resource":' + oo + b',"search":{"mode":"outcome"}}')
    return bundle("searchset", entries, links, **_shown_total(total, node))


def _shown_total(total: int | None, node: Node) -> dict[str, Any]:
    """Bundle.total as the caller may see it: small cells suppressed for the roles whose counts are."""
    return bundle_total(total, policy.count_minimum(node.settings.small_cell_min))


def matching(conn: Connection, res_type: str, query: str, limits: Limits | None, limit: int = 2) -> list[str]:
    """Ids matching a conditional operation's criteria (If-None-Exist, conditional update/delete), within
    the node's `limits` (None: a query the node wrote itself, not a client's)."""
    parsed = conditions(res_type, query, limits)
    found = plans.shape(res_type, parsed, "", "node")
    if found is None:
        return [row[0] for row in conn.execute(_matching_query(conn, res_type, parsed), {"limit": limit})]
    key = ("matching", found.key, conn.dialect.name)
    ready = plans.ready(key, lambda: Ready(_matching_query(conn, res_type, plans.bound(parsed))))
    return [row[0] for row in ready.rows(conn, found.binds | {"limit": limit})]


def _matching_query(conn: Connection, res_type: str, parsed: Parsed) -> Select[Any]:
    """The ids `matching` returns, at most `limit` (a bind parameter), in id order. Its statement is built once
    per shape: the inclusion rules ask it for each EpisodeOfCare a Bundle writes (its patient's Patients
    by SSIN), and building it was ~75 % of that question's CPU."""
    page = Page({res_type: parsed}, "")
    page.walk = _walk(res_type, parsed, "")
    q, key = _in_id_order(conn, page, resources.c.res_id)
    return q.order_by(key).limit(bindparam("limit", type_=Integer))


def any_match(conn: Connection, res_type: str, query: str) -> bool:
    """Whether anything matches criteria the node wrote itself, typically one parameter with many values
    (the conditional creates of a Bundle, asked together). Its statement is built once per shape (`plans`):
    building one with 100 values took ~5 ms, SQLite's answer ~0.3 ms."""
    parsed = conditions(res_type, query, None)
    found = plans.shape(res_type, parsed, "", "node")
    if found is None:
        return conn.execute(_any_query(res_type, parsed)).first() is not None
    key = ("any", found.key, conn.dialect.name)
    return bool(plans.ready(key, lambda: Ready(_any_query(res_type, plans.bound(parsed)))).rows(conn, found.binds))


def _any_query(res_type: str, parsed: Parsed) -> Select[Any]:
    """One match of `parsed`, if any: a criterion's several values may drive the lookup through their index
    rows (see `sql.driver`), in no order, as one row answers (ordered or grouped by id, SQLite walked every
    index row of the type in id order instead)."""
    walk = _walk(res_type, parsed, "", single=False)
    if walk is None:
        return select(resources.c.res_id).where(Page({res_type: parsed}, "").where).limit(1)
    return select(walk.table.c.res_id).select_from(_joined(walk.table)).where(walk.condition, walk.rest).limit(1)


def conditions(res_type: str, query: str, limits: Limits | None) -> Parsed:
    """A conditional operation's criteria, parsed; a 400 for what may not be one (or exceeds `limits`)."""
    params = parse_query(query.lstrip("?"))
    if not params:
        raise fail(400, "invalid", "Conditional operations need search criteria")
    if limits is not None:
        limits.check(params)
    parsed = _parse(registry(), res_type, params, lenient=False)
    if parsed.result:
        raise fail(400, "invalid", f"Only filters may be used as conditions, not {', '.join(parsed.result)}")
    return parsed


def _types(res_type: str | None, params: list[tuple[str, str]]) -> tuple[str, ...]:
    """The types searched; a system search without `_type` covers those the caller may search."""
    if res_type is not None:
        kind(res_type)
        if any(k == "_type" for k, _ in params):
            raise fail(400, "invalid", "_type is only allowed in a system-level search", "_type")
        return (res_type,)
    named = [t.strip() for k, v in params if k == "_type" for t in v.split(",") if t.strip()]
    for t in named:
        kind(t)
    searchable = tuple(t for t in KINDS if policy.reach(t, "s"))
    if not named and not searchable:
        raise policy.forbidden()
    return tuple(dict.fromkeys(named)) or searchable


def _authorise(conn: Connection, page: Page) -> None:
    """What the caller may see of each type searched (403 for a type it may not search at all), and of
    each type a chain or `_has` looks into. Criteria or sorts on what a redaction removes only match
    what the caller sees in full."""
    for res_type, parsed in page.parsed.items():
        hidden = any(_reaches_hidden(c) for c in parsed.criteria) or any(
            code not in REDACTED_PARAMS for code, _, _ in page.sort
        )
        page.allowed[res_type] = policy.condition(conn, res_type, "s", full=hidden)
        policy.prepare(conn, {t for c in parsed.criteria for t in _inner_types(c)})


def _reaches_hidden(c: Criterion) -> bool:
    return bool(c.chain or c.has or c.param is None or c.param.code not in REDACTED_PARAMS)


def _inner_types(c: Criterion) -> set[str]:
    """Types a chain or reverse chain of `c` looks into, however deep."""
    return {t for i in c.chain for t in (i.res_type, *_inner_types(i))}


def _parse(reg: Any, res_type: str, params: list[tuple[str, str]], lenient: bool, keep: bool = False) -> Parsed:
    """The criteria of one type. `keep`: a search's, parsed once per query repeated, unless lenient (lenient
    handling records what it ignores on the Parsed as the search goes on). Conditions are not kept: a
    Bundle's conditional creates ask ~100 values at once, each Bundle its own."""
    try:
        if keep and not lenient:
            return _parsed(reg, res_type, tuple(params))
        return parse(reg, res_type, params, lenient)
    except SearchError as exc:
        raise FHIRError(400, [exc.issue]) from None


@lru_cache(maxsize=1024)
def _parsed(reg: Any, res_type: str, params: tuple[tuple[str, str], ...]) -> Parsed:
    """`parse` without lenience, kept for the queries that come back (an aggregator's, all day): a strict
    Parsed is never changed once parsed, and what plans derive from it is kept on it (`plans.shape`)."""
    return parse(reg, res_type, list(params))


def _type_condition(
    res_type: str,
    parsed: Parsed,
    base: str,
    allowed: ColumnElement[bool] | None = None,
    skip: Criterion | None = None,
) -> ColumnElement[bool]:
    """The criteria, and what the caller may see (`allowed`), as SQL on a `resources` row; a value only found
    wrong here (a bad date) is refused like an unknown parameter. With `skip`, the criterion whose index rows a
    walk joins to their resources by number: those rows are of this type and live (index rows exist only for
    live resources), so neither is asked of the row again (~400 instructions a row of a page, SQLite)."""
    conds: list[ColumnElement[bool]] = [true()] if skip is not None else [named(resources, "res_type", res_type), _LIVE]
    if allowed is not None:
        conds.append(allowed)
    return and_(*conds, *_probes(parsed, base, skip, resources, lambda exc, given: _refuse(parsed, exc, given)))


def _probes(
    parsed: Parsed,
    base: str,
    skip: Criterion | None,
    row: FromClause,
    refuse: Callable[[SearchError, tuple[str, str]], None],
) -> list[ColumnElement[bool]]:
    conds = []
    for c in parsed.criteria:
        if c is skip:
            continue
        try:
            conds.append(probe(c, base, row))
        except SearchError as exc:
            refuse(exc, (c.name, c.raw))
    return conds


def _walk(
    res_type: str, parsed: Parsed, base: str, allowed: ColumnElement[bool] | None = None, single: bool = True
) -> Walk | None:
    """The most selective criterion whose index rows come in id order, if any (see `sql.driver`)."""
    ranked = []
    for i, c in enumerate(parsed.criteria):
        try:
            found = driver(c, base, single)
        except SearchError:
            continue  # refused (or ignored) with its message by _type_condition
        if found is not None:
            ranked.append((found[2], i, c, found))
    if not ranked:
        return None
    _, _, chosen, (table, condition, _, unique) = min(ranked, key=lambda x: (x[0], x[1]))
    return Walk(
        table,
        condition,
        _type_condition(res_type, parsed, base, allowed, skip=chosen),
        chosen,
        allowed is None,
        unique,
    )


def _refuse(parsed: Parsed, exc: SearchError, given: tuple[str, str] | None = None) -> None:
    try:
        parsed.refuse(exc, given)
    except SearchError:
        raise FHIRError(400, [exc.issue]) from None


def _single(result: dict[str, list[str]], name: str) -> str | None:
    values = result.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise fail(400, "invalid", f"{name} may appear only once", name)
    return values[0]


def _total_mode(result: dict[str, list[str]]) -> str:
    """`_total`, or the vendor `_totalMethod` it stands for (`count` asks for an exact total)."""
    total = _single(result, "_total")
    if total not in (None, "none", "estimate", "accurate"):
        raise fail(400, "value", f"_total must be none, estimate or accurate, not '{total}'", "_total")
    vendor = _single(result, "_totalMethod")
    if vendor is None:
        return total or "none"
    mapped = VENDOR_TOTALS.get(vendor)
    if mapped is None:
        raise fail(400, "value", f"_totalMethod must be count, estimate or none, not '{vendor}'", "_totalMethod")
    if total not in (None, mapped):
        raise fail(400, "invalid", f"_total={total} contradicts _totalMethod={vendor}", "_totalMethod")
    return mapped


def _count(result: dict[str, list[str]], node: Node) -> int:
    raw = _single(result, "_count")
    if raw is None:
        return node.settings.default_count
    if not raw.isdigit():
        raise fail(400, "value", f"_count must be a non-negative integer, not '{raw}'", "_count")
    return policy.page_cap(int(raw), node.settings.max_count, node.settings.coordinator_max_count)


def _sort(parsed: Parsed, types: tuple[str, ...]) -> list[tuple[str, bool, str]]:
    """(code, descending, parameter type) per `_sort` key; a key the node cannot sort by is refused."""
    keys = []
    for spec in (s.strip() for v in parsed.result.get("_sort", []) for s in v.split(",")):
        if not spec:
            continue
        desc = spec.startswith("-")
        code = spec.lstrip("-")
        if code in ("_id", "_lastUpdated"):
            keys.append((code, desc, "special"))
            continue
        found = {registry().get(t, code) for t in types}
        param_types = {p.type for p in found if p is not None}
        if None in found or len(param_types) != 1 or next(iter(param_types)) not in _SORT_COLUMNS:
            _refuse(parsed, SearchError(error("not-supported", f"Cannot sort by '{code}'", "_sort")))
            continue
        keys.append((code, desc, param_types.pop()))
    return keys


def _sort_columns(page: Page) -> list[tuple[ColumnElement[Any], bool]]:
    """(expression, descending) for each sort key, then the (type, id) tie-breaker."""
    cols: list[tuple[ColumnElement[Any], bool]] = []
    for code, desc, ptype in page.sort:
        if code == "_id":
            cols.append((resources.c.res_id, desc))
            continue
        if code == "_lastUpdated":
            cols.append((resources.c.last_updated, desc))
            continue
        table = INDEX_TABLES[ptype]
        column = table.c[_SORT_COLUMNS[ptype][1 if desc else 0]]
        agg = func.max(column) if desc else func.min(column)
        sub = (
            select(agg)
            .where(
                table.c.res_type == resources.c.res_type, table.c.res_id == resources.c.res_id, table.c.param == code
            )
            .scalar_subquery()
        )
        cols.append((sub, desc))
    cols += [(resources.c.res_type, False), (resources.c.res_id, False)]
    return cols


def _fetch(
    conn: Connection, page: Page, cursor: tuple[str, list[Any]] | None, count: int
) -> tuple[list[Any], bool, bool]:
    """One page by keyset: rows after (or, for `previous`, before) the cursor's sort values."""
    if not page.sort and len(page.types) == 1:
        return _fetch_in_id_order(conn, page, cursor, count)
    cols = _sort_columns(page)
    labelled = [c.label(f"k{i}") for i, (c, _) in enumerate(cols)]
    inner = (
        select(resources.c.res_type, resources.c.res_id, resources.c.content, resources.c.version_id, *labelled)
        .where(page.where)
        .subquery()
    )
    keys = [(inner.c[f"k{i}"], desc) for i, (_, desc) in enumerate(cols)]
    backwards = cursor is not None and cursor[0] == "p"
    q = select(inner.c.res_type, inner.c.res_id, inner.c.content, inner.c.version_id, *(k for k, _ in keys))
    if cursor is not None:
        q = q.where(_after(keys, cursor[1], backwards))
    order = []
    for k, desc in keys:
        flip = desc != backwards
        nulls_last = k.is_(None).asc() if not backwards else k.is_(None).desc()
        order += [nulls_last, k.desc() if flip else k.asc()]
    return _page(list(conn.execute(q.order_by(*order).limit(count + 1))), count, backwards, cursor)


def _fetch_in_id_order(
    conn: Connection, page: Page, cursor: tuple[str, list[Any]] | None, count: int
) -> tuple[list[Any], bool, bool]:
    """The default order of a one-type search: by id, so the database can stop after `count + 1` matches
    instead of collecting and sorting them all. The database is told how: walk the most selective id-ordered
    index (else the primary key) and probe the other criteria per row. Given the plain criteria, PostgreSQL's
    planner often collected every match and sorted them (5-10 ms at 2,000 EpisodeOfCare, 400+ ms at 100,000)."""
    direction = cursor[0] if cursor is not None else None
    values = {"limit": count + 1, "after": cursor[1][1] if cursor is not None else None}
    if page.plan is None:
        rows = list(conn.execute(_id_order_query(conn, page, direction), values))
    else:
        key = (page.plan.key, conn.dialect.name, direction)
        ready = plans.ready(key, lambda: _planned_query(conn, page, direction))
        rows = ready.rows(conn, values | page.plan.binds)
    return _page(rows, count, direction == "p", cursor)


def _planned_query(conn: Connection, page: Page, direction: str | None) -> Ready:
    """`_id_order_query` for the page's shape, with its criteria's values as bind parameters."""
    res_type, parsed = next(iter(page.parsed.items()))
    planned = Page({res_type: plans.bound(parsed)}, page.base, allowed=page.allowed)
    planned.walk = _walk(res_type, planned.parsed[res_type], page.base, page.allowed.get(res_type))
    return Ready(_id_order_query(conn, planned, direction))


def _id_order_query(conn: Connection, page: Page, direction: str | None) -> Select[Any]:
    """The page in id order, `limit` rows from the id `after` (bind parameters): forward, or backwards
    (`direction` p) for a `previous` link."""
    r = resources
    q, key = _in_id_order(conn, page, r.c.res_type, r.c.res_id, r.c.content, r.c.version_id)
    after = bindparam("after")
    if direction is not None:
        q = q.where(key < after if direction == "p" else key > after)
    return q.order_by(key.desc() if direction == "p" else key.asc()).limit(bindparam("limit", type_=Integer))


def _page(rows: list[Any], count: int, backwards: bool, cursor: Any) -> tuple[list[Any], bool, bool]:
    """A page from `count + 1` rows fetched in paging direction: (rows in sort order, has next, has
    previous). Coming back from a later page means there is a next one."""
    more = len(rows) > count
    rows = rows[:count]
    if backwards:
        rows.reverse()
        return rows, True, more
    return rows, more, cursor is not None


def _in_id_order(conn: Connection, page: Page, *cols: Any) -> tuple[Select[Any], ColumnElement[str]]:
    """`cols` of the page's matches, unordered, and the id column to order them by: the walked index's
    when the page has a walk, else the primary key's."""
    r = resources
    if page.walk is None:
        return select(*cols).where(page.where), r.c.res_id
    w = page.walk
    joined = _joined(w.table)
    # A resource with two index rows for the value (same code, other systems) must come once. SQLite keeps
    # walking the index when grouped by its column alone; PostgreSQL needs the resource's primary key grouped
    # too before it selects the resource's other columns (and still walks the index: the join ties the keys).
    group = [w.table.c.res_id] if conn.dialect.name == "sqlite" else [w.table.c.res_id, r.c.rid]
    q = select(*cols).select_from(joined).where(w.condition, w.rest)
    return (q if w.unique else q.group_by(*group)), w.table.c.res_id


@cache
def _joined(index: Table) -> FromClause:
    """An index table joined to the resources its rows belong to, by `rid` (which the walked indexes hold:
    on SQLite a page's rows are then found by the table's own key, not through its (type, id) index first:
    the compare's three pages in a loop 74 -> 50 us of SQL a search at 2,000), built once per table."""
    return index.join(resources, index.c.rid == resources.c.rid)


def _after(keys: list[tuple[Any, bool]], values: list[Any], backwards: bool) -> ColumnElement[bool]:
    """Rows strictly after `values` in the sort order (before, when paging backwards); NULLs sort last."""
    ors = []
    for i, (k, desc) in enumerate(keys):
        eq = [keys[j][0].is_(None) if values[j] is None else keys[j][0] == values[j] for j in range(i)]
        v = values[i]
        later_is_greater = desc == backwards
        if v is None:
            step = false() if not backwards else k.is_not(None)
        else:
            beyond = k > v if later_is_greater else k < v
            step = or_(beyond, k.is_(None)) if not backwards else beyond
        ors.append(and_(*eq, step))
    return or_(*ors)


def _encode_cursor(direction: str, row: Any, page: Page) -> str:
    # The sort keys follow the resource's columns (a sorted page's rows end with the (type, id) tie-breaker
    # again: a page in id order does not select them twice, ~12 us a page of 50 on SQLite).
    values = [*row[4 : 4 + len(page.sort)], row[0], row[1]]
    raw = orjson.dumps([direction, [_jsonable(v) for v in values]])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, Decimal):
        return str(v)
    return v


def _decode_cursor(raw: str | None, page: Page) -> tuple[str, list[Any]] | None:
    if raw is None:
        return None
    try:
        direction, values = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        kinds = [
            ("special" if code == "_id" else "date" if code == "_lastUpdated" else ptype)
            for code, _, ptype in page.sort
        ] + ["token", "token"]
        if direction not in ("n", "p") or len(values) != len(kinds):
            raise ValueError
        return direction, [_typed(v, k) for v, k in zip(values, kinds, strict=True)]
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise fail(400, "value", "_cursor is not one this node issued for this search", "_cursor") from None


def _typed(v: Any, ptype: str) -> Any:
    if v is None:
        return None
    if ptype == "date":
        return datetime.fromisoformat(v)
    if ptype in ("number", "quantity"):
        return Decimal(v)
    return v


def _total(conn: Connection, page: Page, mode: str, cursor: Any, rows: list[Any], has_next: bool) -> int | None:
    """Exact when the whole result is this first page (free) or when asked; bounded for `estimate`."""
    if cursor is None and not has_next:
        return len(rows)
    if mode == "accurate":
        return _count_all(conn, page)
    if mode == "estimate":
        n = _count_all(conn, page, _TOTAL_BOUND + 1)
        return n if n <= _TOTAL_BOUND else None
    return None


def _count_all(conn: Connection, page: Page, bound: int | None = None) -> int:
    """How many resources match (at most `bound`): over the most selective id-ordered index when there is
    one and the policy adds no condition (its rows for the value, probing the other criteria on the
    index row), on either database and whatever the sort, not by testing every resource of the type
    (11-125x slower at 100,000 resources)."""
    w = page.walk
    if w is None and len(page.types) == 1:
        res_type = page.types[0]
        w = _walk(res_type, page.parsed[res_type], page.base, page.allowed.get(res_type))
    if w is not None and w.policy_free:
        bare = w.bare(page.parsed[page.types[0]], page.base)
        q = select(w.table.c.res_id).where(w.condition, bare)
        q = q if w.unique else q.group_by(w.table.c.res_id)
    else:
        q, _ = _in_id_order(conn, page, resources.c.res_id)
    if bound is not None:
        q = q.limit(bound)
    with unprepared(conn):
        return conn.execute(select(func.count()).select_from(q.subquery())).scalar_one()


def _includes(
    conn: Connection, reg: Any, rows: Iterable[Any], result: dict[str, list[str]], base: str, limits: Limits
) -> list[tuple[str, str, bytes]]:
    """_include and _revinclude (with :iterate): referenced and referring resources, each once; iterating
    beyond `limits.iterate` rounds is a 400."""
    specs = [
        (name, v)
        for name in (
            "_include",
            "_revinclude",
            "_include:iterate",
            "_revinclude:iterate",
            "_include:recurse",
            "_revinclude:recurse",
        )
        for v in result.get(name, [])
    ]
    out: list[tuple[str, str, bytes]] = []
    if not specs:
        return out
    seen = {(r[0], r[1]) for r in rows}
    frontier = set(seen)
    for round_ in range(limits.iterate + 2):
        found: set[tuple[str, str]] = set()
        for name, spec in specs:
            if round_ > 0 and ":" not in name:
                continue
            found |= _include_targets(conn, reg, name.split(":")[0], spec, frontier)
        new = found - seen
        if not new:
            break
        if round_ > limits.iterate:
            raise limits.iterated_too_deep(limits.iterate)
        seen |= new
        shown: set[tuple[str, str]] = set()
        for t in sorted({t for t, _ in new}):
            if policy.reach(t, "r") is None:
                continue
            ids = [i for tt, i in new if tt == t]
            allowed = policy.condition(conn, t, "r")
            q = select(resources.c.res_type, resources.c.res_id, resources.c.content).where(
                resources.c.res_type == t,
                resources.c.res_id.in_(ids),
                resources.c.deleted == false(),
                allowed if allowed is not None else true(),
            )
            for r in conn.execute(q):
                content, redacted = policy.shown(conn, r.res_type, r.content)
                out.append((r.res_type, r.res_id, content))
                if not redacted:
                    shown.add((r.res_type, r.res_id))
        frontier = shown
    return out


def _include_targets(
    conn: Connection, reg: Any, kind_: str, spec: str, frontier: set[tuple[str, str]]
) -> set[tuple[str, str]]:
    parts = spec.split(":")
    if spec == "*":
        source, code, target = None, None, None
    elif len(parts) in (2, 3):
        source, code = parts[0], parts[1]
        target = parts[2] if len(parts) == 3 else None
        if source not in KINDS:
            raise fail(400, "not-supported", f"{kind_}: '{source}' is not a type this node serves", kind_)
        param = reg.get(source, code) if code != "*" else None
        if code != "*" and (param is None or param.type != "reference"):
            raise fail(400, "not-supported", f"{kind_}: '{code}' is not a reference parameter of {source}", kind_)
        if code == "*":
            code = None
    else:
        raise fail(400, "invalid", f"{kind_} must be Type:parameter[:targetType] or *, not '{spec}'", kind_)
    ref = idx_reference
    by_type: dict[str, list[str]] = {}
    for t, i in frontier:
        by_type.setdefault(t, []).append(i)
    found: set[tuple[str, str]] = set()
    for t, ids in by_type.items():
        if kind_ == "_include":
            if source is not None and source != t:
                continue
            q = select(ref.c.target_type, ref.c.target_id).where(
                ref.c.res_type == t,
                ref.c.res_id.in_(ids),
                ref.c.target_id.is_not(None),
                named_param(ref, t, code) if code else true(),
                ref.c.target_type == target if target else true(),
            )
        else:
            q = select(ref.c.res_type, ref.c.res_id).where(
                ref.c.target_type == t,
                ref.c.target_id.in_(ids),
                ref.c.res_type == source if source else true(),
                named_param(ref, source, code) if source and code else true(),
            )
        found |= {(a, b) for a, b in conn.execute(q) if a in KINDS}
    return found


def _entries(
    base: str, found: Iterable[Sequence[Any]], mode: str, summary: str | None, elements: list[str]
) -> list[bytes]:
    """Search entries of rows starting (type, id, stored bytes): a page's rows as fetched, when none is
    redacted (copying them into triples cost ~7 us a page of 50). Types and ids need no JSON escaping (a type
    is one the node knows, an id matches [A-Za-z0-9.-]{1,64}); the base is escaped once."""
    head = b'{"fullUrl":' + orjson.dumps(base)[:-1] + b"/"
    end = b',"search":{"mode":"' + mode.encode() + b'"}}'
    if shaping.asks(summary, elements):
        found = ((r[0], r[1], shaping.shape(r[2], summary, elements)) for r in found)
    return [b"".join((head, f"{r[0]}/{r[1]}".encode(), b'","resource":', r[2], end)) for r in found]


def _used(params: list[tuple[str, str]], page: Page) -> list[tuple[str, str]]:
    """The parameters the search honoured, for its links (R4: `self` shows only those): without what
    lenient handling ignored for every type searched, `_sort` reduced to the keys it sorted by."""
    dropped = set.intersection(*(p.dropped for p in page.parsed.values()))
    sort = ",".join(("-" if desc else "") + code for code, desc, _ in page.sort)
    kept = []
    for k, v in params:
        if k == "_sort":
            if sort:
                kept.append((k, sort))
            sort = ""  # one _sort, where the first one was
        elif (k, v) not in dropped:
            kept.append((k, v))
    return kept


def _link(base: str, res_type: str | None, params: list[tuple[str, str]], cursor: str | None) -> str:
    kept = tuple((k, v) for k, v in params if k != "_cursor")
    at = ""
    if cursor is not None:  # the node's own cursors are URL-safe base64: nothing in them to encode
        at = f"_cursor={cursor}" if _URL_SAFE.fullmatch(cursor) else urlencode((("_cursor", cursor),))
    query = "&".join(q for q in (_query_string(kept), at) if q)
    path = f"{base}/{res_type}" if res_type else base
    return f"{path}?{query}" if query else path


@lru_cache(maxsize=1024)
def _query_string(params: tuple[tuple[str, str], ...]) -> str:
    """`params` URL-encoded: a page's links repeat them, and a client repeats its searches (urlencode took
    ~5 us for three parameters, a page's links ~15)."""
    return urlencode(params)

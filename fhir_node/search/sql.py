"""Criteria to SQL over the index tables: each criterion is a set of matching ids of its type (a
subquery), so AND, OR, chains and reverse chains compose without ever reading resource JSON."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    FromClause,
    Select,
    Table,
    and_,
    bindparam,
    false,
    literal,
    not_,
    or_,
    select,
)

from fhir_node.datetimes import date_range
from fhir_node.outcome import error
from fhir_node.rules import pseudonym
from fhir_node.search.fhirpath import primitive
from fhir_node.search.index import param_is, param_names
from fhir_node.search.parse import Criterion, SearchError, split_prefix, unescape
from fhir_node.search.values import fold, number_range
from fhir_node.security import policy
from fhir_node.store.repository import now
from fhir_node.store.schema import INDEX_TABLES, idx_reference, resources

#: The form of values equal to any of several (`_any_of`), their count after it.
_ANY_OF = "any of "
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
#: A local reference (`Type/id`, maybe versioned; the type and the id grouped) and a bare id.
_LOCAL_REFERENCE = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
#: Probes read index tables under an alias, so an index table the enclosing query walks is never
#: correlated into them; one alias per table serves every probe (each EXISTS is its own scope).
_PROBED = {t.name: t.alias(f"probe_{t.name}") for t in INDEX_TABLES.values()}


@cache
def named(table: FromClause, column: str, name: str) -> ColumnElement[bool]:
    """`column = name` for a name of the node's own, finite vocabulary (a type, a parameter code), built
    once: SQLAlchemy takes ~10-20 us to build one comparison, as long as SQLite takes for a small search."""
    return table.c[column] == name


@cache
def named_param(table: FromClause, res_type: str, code: str) -> ColumnElement[bool]:
    """`index.param_is` on one of the node's own tables or aliases, built once (see `named`)."""
    return param_is(table, res_type, code)


@cache
def same_resource(index: FromClause, row: FromClause) -> ColumnElement[bool]:
    """The rows of `index` that belong to the resource `row` stands for (same type and id), built once."""
    return and_(index.c.res_type == row.c.res_type, index.c.res_id == row.c.res_id)


def matching_ids(c: Criterion, base: str) -> Select[tuple[str]]:
    """The ids of live resources of `c.res_type` that satisfy `c`: a self-contained subquery (never
    correlated, even when the enclosing query reads the same index table). A chain or `_has` only looks
    into what the caller may search (`policy.prepare`)."""
    ids = _ids(c, base).correlate(None)
    allowed = policy.prepared(c.res_type)
    if allowed is None:
        return ids
    r = resources
    return select(r.c.res_id).where(r.c.res_type == c.res_type, r.c.res_id.in_(ids), allowed).correlate(None)


def _ids(c: Criterion, base: str) -> Select[tuple[str]]:
    if c.has is not None:
        ref_type, ref_code = c.has
        ref = idx_reference
        return select(ref.c.target_id).where(
            ref.c.res_type == ref_type,
            named_param(ref, ref_type, ref_code),
            ref.c.target_type == c.res_type,
            ref.c.res_id.in_(matching_ids(c.chain[0], base)),
        )
    assert c.param is not None
    table = _table(c)
    if c.chain:
        ref = idx_reference
        return select(ref.c.res_id).where(
            ref.c.res_type == c.res_type,
            named_param(ref, c.res_type, c.param.code),
            or_(*(and_(ref.c.target_type == i.res_type, ref.c.target_id.in_(matching_ids(i, base))) for i in c.chain)),
        )
    if c.param.code == "_id" and c.missing is None and c.modifier is None:
        return _live(c.res_type, lambda res_id: res_id.in_(c.values))
    indexed = select(table.c.res_id).where(
        named(table, "res_type", c.res_type), named_param(table, c.res_type, c.param.code)
    )
    if c.missing is not None:
        return _live(c.res_type, lambda res_id: res_id.not_in(indexed)) if c.missing else indexed
    if c.modifier == "not":
        positive = indexed.where(_values(table, c, base))  # `:not` is a token modifier: the values' own SQL
        return _live(c.res_type, lambda res_id: res_id.not_in(positive))
    return indexed.where(_values(table, c, base))


def _live(res_type: str, keep: Callable[[Any], ColumnElement[bool]]) -> Select[tuple[str]]:
    """Ids of live resources of a type that `keep` accepts (an alias: never correlated with an enclosing
    query on `resources`)."""
    live = resources.alias("live")
    return select(live.c.res_id).where(live.c.res_type == res_type, live.c.deleted == false(), keep(live.c.res_id))


def probe(c: Criterion, base: str, r: FromClause = resources) -> ColumnElement[bool]:
    """`c` as a condition on the enclosing query's row `r` (a `resources` row, or an index row standing for
    its resource): an EXISTS that looks the row up in the index by (type, id, param), so a walk in id
    order can stop as soon as a page is full."""
    ref = _PROBED["idx_reference"]
    if c.has is not None:
        ref_type, ref_code = c.has
        return (
            select(ref.c.res_id)
            .where(
                ref.c.res_type == ref_type,
                named_param(ref, ref_type, ref_code),
                ref.c.target_type == r.c.res_type,
                ref.c.target_id == r.c.res_id,
                ref.c.res_id.in_(matching_ids(c.chain[0], base)),
            )
            .exists()
        )
    assert c.param is not None
    if c.param.code == "_id" and c.missing is None and c.modifier is None:
        return r.c.res_id.in_(c.values if c.bound is None else _slot(_name(c.bound, "ids"), c.values))
    table = _PROBED[_table(c).name]
    own = (same_resource(table, r), named_param(table, c.res_type, c.param.code))
    if c.chain:  # `table` is (an alias of) idx_reference here
        targets = [
            and_(table.c.target_type == i.res_type, table.c.target_id.in_(matching_ids(i, base))) for i in c.chain
        ]
        return select(table.c.res_id).where(*own, or_(*targets)).exists()
    if c.missing is not None:
        present = select(table.c.res_id).where(*own).exists()
        return not_(present) if c.missing else present
    if c.modifier == "not":
        return not_(select(table.c.res_id).where(*own, _values(table, c, base)).exists())
    return select(table.c.res_id).where(*own, _values(table, c, base)).exists()


def driver(c: Criterion, base: str, single: bool = True) -> tuple[Table, ColumnElement[bool], int, bool] | None:
    """When `c` is one equality whose index rows come in id order (the index ends with res_id), the rows
    a search can walk instead of scanning its type, a rank (lower: likely fewer rows), and whether a
    resource has at most one of those rows (`_unique`). With `single` False, several values (ORed)
    qualify too: their rows come in id order per value only, which serves finding matches (conditional
    creates, looked up together), not walking pages."""
    if c.has is not None or c.chain or c.missing is not None or c.param is None or not c.values:
        return None
    if single and len(c.values) != 1:
        return None
    ranks = [_rank(c, value, base) for value in c.values]
    if None in ranks:
        return None
    rank = max(r for r in ranks if r is not None)
    table = _table(c)
    condition = and_(
        named(table, "res_type", c.res_type), named_param(table, c.res_type, c.param.code), _values(table, c, base)
    )
    return table, condition, rank, len(c.values) == 1 and _unique(c, c.values[0], base)


def _unique(c: Criterion, value: str, base: str) -> bool:
    """Whether a resource has at most one index row for this value, so that walking its rows meets each
    resource once (grouping them by id, which SQLite then does for every column it returns, doubled the
    time of a page of 50: 69 -> 133 us). Rows are unique per resource, so it holds where the value fixes
    the whole row: a reference to one target (`Type/id`, an id of a one-target parameter, a URL), a uri,
    and a code of a parameter on primitive elements (no system, text or type beside it)."""
    assert c.param is not None
    ptype = c.param.type
    if len(param_names(c.res_type, c.param.code)) > 1:  # rows of two names may stand for it
        return False
    if ptype == "reference" and c.modifier is None:
        form = _reference_form(value, None, c, base)[0]
        return form in ("local", "url") or (form.startswith("id of ") and "," not in form)
    if ptype == "token" and c.modifier is None:
        return primitive(c.param.expression) and _token_form(value, None, c)[0] in ("code", "no-system")
    return ptype == "uri" and c.modifier is None


def _rank(c: Criterion, value: str, base: str) -> int | None:
    assert c.param is not None
    ptype = c.param.type
    if ptype == "token" and c.modifier is None and _UNESCAPED_PIPE.split(value)[-1]:
        return 0 if c.param.code in ("identifier", "_id") else 2
    if ptype == "reference" and c.modifier is None and _single_target(c, value, base):
        return 0
    if ptype == "reference" and c.modifier == "identifier" and _UNESCAPED_PIPE.split(value)[-1]:
        return 0  # by Reference.identifier: its rows for one value come in id order too (id_value, res_id)
    if (ptype == "uri" and c.modifier is None) or (ptype == "string" and c.modifier == "exact"):
        return 1
    return None


def _single_target(c: Criterion, value: str, base: str) -> bool:
    """A reference value naming one target type and id (rows for it are then in id order)."""
    assert c.param is not None
    text = value[len(base) + 1 :] if value.startswith(base + "/") else value
    if _LOCAL_REFERENCE.fullmatch(text):
        return True
    targets = c.target_types or tuple(c.param.targets)
    return len(targets) == 1 and _ID.fullmatch(text) is not None


def _table(c: Criterion) -> Table:
    assert c.param is not None
    table = INDEX_TABLES.get(c.param.type)
    if table is None:
        raise SearchError(error("not-supported", f"Parameters of type {c.param.type} are not supported", c.name))
    return table


def _values(table: FromClause, c: Criterion, base: str) -> ColumnElement[bool]:
    """The criterion's values (OR'ed) as a condition on `table`'s rows; for a criterion a plan is built
    from (`c.bound`), with bind parameters in place of the values (see `plans`)."""
    assert c.param is not None
    shaped = _SHAPES.get(c.param.type)
    if shaped is None:
        build = _BUILDERS[c.param.type]
        return or_(*(build(table, v, c.modifier, c, base) for v in c.values))
    classify, render = shaped
    conds = []
    pinned: list[dict[str, list[Any]] | None] = []
    for j, v in enumerate(c.values):
        form, args = classify(v, c.modifier, c, base)
        if c.bound is not None:
            args = tuple(_slot(_name(c.bound, j, k), a) for k, a in enumerate(args))
        conds.append(render(table, form, args))
        pinned.append(_pins(c.param.type, form, args))
    return and_(*_implied(table, pinned), or_(*conds))


def _pins(ptype: str, form: str, a: tuple[Any, ...]) -> dict[str, list[Any]] | None:
    """The indexed columns one value's condition holds equal to given values (those an index leads with after
    type and parameter), or None."""
    if ptype == "reference" and form == "local":
        return {"target_type": [a[0]], "target_id": [a[1]]}
    if ptype == "reference" and form.startswith("id of "):
        return {"target_type": form.removeprefix("id of ").split(","), "target_id": [a[0]]}
    column = "code" if ptype == "token" else "id_value" if ptype == "reference" else None
    if column is None:
        return None
    if form in ("code", "no-system", "system code"):
        return {column: [a[-1]]}
    if form.startswith(_ANY_OF):
        return {column: list(a)}
    if form.startswith("system " + _ANY_OF):
        return {column: list(a[1:])}
    return None


def _implied(table: FromClause, pinned: list[dict[str, list[Any]] | None]) -> list[ColumnElement[bool]]:
    """For several values whose conditions each pin the same columns: those columns IN the values, which the
    OR of the conditions implies. SQLite cannot use an index for an OR of pairs (`system = ? AND code = ?`
    OR ...) and scanned every row of the type instead (100 identifiers: ~3 ms at 3,500 resources, growing
    with them); given the IN, it looks each value up."""
    if len(pinned) < 2 or any(p is None for p in pinned):
        return []
    columns = pinned[0].keys() if pinned[0] is not None else ()
    if any(p is None or p.keys() != columns for p in pinned):
        return []
    implied = []
    for column in columns:
        values = [v for p in pinned if p is not None for v in p[column]]
        if all(isinstance(v, str) for v in values):
            values = list(dict.fromkeys(values))
        implied.append(table.c[column].in_(values))
    return implied


def forms(c: Criterion, prefix: str, base: str) -> tuple[tuple[str, ...], dict[str, Any]] | None:
    """The forms of a criterion's values (each value's SQL then differs only by bound values) and those
    values under the names `_values` gives them on a copy bound to `prefix`; None for what plans leave to
    `probe`: chains, `_has`, `:missing`, `:not`, numbers and quantities, and a value refused (its error
    then comes from `probe`)."""
    if c.param is None or c.chain or c.has is not None or c.missing is not None or c.modifier == "not":
        return None
    shaped = _SHAPES.get(c.param.type)
    if shaped is None:
        return None
    binds: dict[str, Any] = {}
    found = []
    try:
        for j, v in enumerate(c.values):
            form, args = shaped[0](v, c.modifier, c, base)
            found.append(form)
            binds.update((_name(prefix, j, k), a) for k, a in enumerate(args))
    except SearchError:
        return None
    if c.param.code == "_id":
        binds[_name(prefix, "ids")] = list(c.values)
    return tuple(found), binds


def _name(prefix: str, *at: int | str) -> str:
    """The bind parameter of a criterion's `prefix` for its value `j`'s argument `k` (or all its ids)."""
    return "_".join((prefix, *map(str, at)))


def _slot(name: str, value: Any) -> BindParameter[Any]:
    """A named bind parameter standing for `value` (a list: an IN over its items)."""
    return bindparam(name, expanding=isinstance(value, list))


def _like_escaped(text: str) -> str:
    """`text` as a literal LIKE pattern part (escape character `/`): what SQLAlchemy's autoescape does,
    done here so the pattern can be a bound value."""
    return text.replace("/", "//").replace("%", "/%").replace("_", "/_")


def _token_form(value: str, modifier: str | None, c: Criterion, _base: str = "") -> tuple[str, tuple[Any, ...]]:
    if modifier == "text":
        return "text", (_like_escaped(fold(unescape(value))),)
    parts = [unescape(p) for p in _UNESCAPED_PIPE.split(value)]
    if modifier == "of-type":
        if len(parts) != 3:
            raise SearchError(error("value", f"{c.name} needs type-system|type-code|value, got '{value}'", c.name))
        return "of-type", tuple(parts)
    if len(parts) == 1:
        return _code_form(parts[0], None)
    if len(parts) != 2:
        raise SearchError(error("value", f"{c.name}: a token is [system|]code, got '{value}'", c.name))
    system, code = parts
    if not system:
        return "no-system", (code,)
    if not code:
        return "system", (system,)
    form, args = _code_form(code, system)
    return f"system {form}", (system, *args)


def _token_sql(t: FromClause, form: str, a: tuple[Any, ...]) -> ColumnElement[bool]:
    if form == "text":
        return t.c.text.startswith(a[0], escape="/")
    if form == "of-type":
        return and_(t.c.type_system == a[0], t.c.type_code == a[1], t.c.code == a[2])
    if form == "no-system":
        return and_(t.c.system.is_(None), t.c.code == a[0])
    if form == "system":
        return t.c.system == a[0]
    if form.startswith("system "):
        return and_(t.c.system == a[0], _code_sql(t.c.code, form.removeprefix("system "), a[1:]))
    return _code_sql(t.c.code, form, a)


def _code_form(value: str, system: str | None) -> tuple[str, tuple[Any, ...]]:
    """A code or identifier value equal to `value`; SSINs rest pseudonymised, so an SSIN (or a value that
    may be one, when no system is given) is looked for as its pseudonyms."""
    if system == pseudonym.SSIN:
        return _any_of(pseudonym.search_forms(value))
    if system is None and pseudonym.may_be_ssin(value):  # one IN: an OR hides from SQLite that the column is
        return _any_of([value, *pseudonym.search_forms(value)])  # not NULL (see `schema.sparse_index`)
    return "code", (value,)


def contextual(found: tuple[str, ...]) -> bool:
    """Whether values in these forms (`forms`) depend on more than the criterion: an SSIN's pseudonyms
    (`_any_of`: which ones, the caller decides) or `ap` on a date (its margin runs from now)."""
    return any(f == "ap" or f.startswith(_ANY_OF) or f.startswith("system " + _ANY_OF) for f in found)


def _any_of(values: list[str]) -> tuple[str, tuple[Any, ...]]:
    """Equal to any of `values`: their count is in the form and each is an argument of its own, so a plan
    binds each (one list bound to an expanding IN leaves the statement to SQLAlchemy, per execution)."""
    return f"{_ANY_OF}{len(values)}", tuple(values)


def _code_sql(column: Any, form: str, a: tuple[Any, ...]) -> ColumnElement[bool]:
    if form.startswith(_ANY_OF):
        return column.in_(list(a))
    return column == a[0]


def _string_form(value: str, modifier: str | None, _c: Criterion, _base: str = "") -> tuple[str, tuple[Any, ...]]:
    text = unescape(value)
    if modifier == "exact":
        return "exact", (text,)
    return modifier or "starts", (_like_escaped(fold(text)),)


def _string_sql(t: FromClause, form: str, a: tuple[Any, ...]) -> ColumnElement[bool]:
    if form == "exact":
        return t.c.exact == a[0]
    if form == "contains":
        return t.c.value.contains(a[0], escape="/")
    return t.c.value.startswith(a[0], escape="/")


def _uri_form(value: str, modifier: str | None, _c: Criterion, _base: str = "") -> tuple[str, tuple[Any, ...]]:
    """:below and :above go by whole path segments: `.../episode` is neither above nor below `.../episode-v2`."""
    uri = unescape(value)
    if modifier == "below":
        root = uri if uri.endswith("/") else uri + "/"
        return "below", (uri, _like_escaped(root))
    if modifier == "above":
        return "above", (_ancestors(uri),)
    return "equal", (uri,)


def _uri_sql(t: FromClause, form: str, a: tuple[Any, ...]) -> ColumnElement[bool]:
    if form == "below":
        return or_(t.c.uri == a[0], t.c.uri.startswith(a[1], escape="/"))
    if form == "above":
        return t.c.uri.in_(a[0])
    return t.c.uri == a[0]


def _ancestors(uri: str) -> list[str]:
    """`uri` and each of its parent paths, with and without the trailing slash."""
    cuts = [i for i, ch in enumerate(uri) if ch == "/"]
    return [uri, *(uri[:i] for i in cuts), *(uri[: i + 1] for i in cuts)]


def _date_form(value: str, _modifier: str | None, c: Criterion, _base: str = "") -> tuple[str, tuple[Any, ...]]:
    prefix, text = split_prefix(value)
    found = date_range(text)
    if found is None:
        raise SearchError(error("value", f"{c.name}: '{text}' is not a date, dateTime or instant", c.name))
    vlo, vhi = found
    if prefix == "ap":
        margin = _date_margin(vlo)
        return prefix, (vlo - margin, vhi + margin)
    return prefix, (vlo, vhi)


def _date_sql(t: FromClause, prefix: str, a: tuple[Any, ...]) -> ColumnElement[bool]:
    """For `ap` the values come with the margin (see `_date_margin`) already applied."""
    vlo, vhi = a
    if prefix == "ap":
        return and_(t.c.low <= vhi, t.c.high >= vlo)
    return _ranged(prefix, t.c.low, t.c.high, vlo, vhi, None)


def _date_margin(value: datetime) -> timedelta:
    """`ap` on dates: 10% of the distance to now, at least a day (R4 leaves the amount to the server)."""
    return max(abs(now() - value) / 10, timedelta(days=1))


def _ranged(prefix: str, lo: Any, hi: Any, vlo: Any, vhi: Any, margin: Any) -> ColumnElement[bool]:
    """R4 prefix semantics between a target range [lo, hi] and a search range [vlo, vhi]."""

    def contained() -> ColumnElement[bool]:  # built only for the prefixes that use it
        return and_(lo >= vlo, hi <= vhi)

    return {
        "eq": contained,
        "ne": lambda: not_(contained()),
        "gt": lambda: hi > vhi,
        "lt": lambda: lo < vlo,
        "ge": lambda: or_(hi > vhi, contained()),
        "le": lambda: or_(lo < vlo, contained()),
        "sa": lambda: lo > vhi,
        "eb": lambda: hi < vlo,
        "ap": lambda: and_(lo <= vhi + margin, hi >= vlo - margin),
    }[prefix]()


def _number(t: FromClause, value: str, _modifier: str | None, c: Criterion, _base: str = "") -> ColumnElement[bool]:
    prefix, text = split_prefix(value)
    parts = [unescape(p) for p in _UNESCAPED_PIPE.split(text)]
    found = number_range(parts[0])
    if found is None:
        raise SearchError(error("value", f"{c.name}: '{parts[0]}' is not a number", c.name))
    exact, vlo, vhi = found
    margin = abs(exact) / 10 or Decimal("0.1")
    if prefix == "eq":
        matched = and_(t.c.value >= vlo, t.c.value < vhi)
    elif prefix == "ne":
        matched = or_(t.c.value < vlo, t.c.value >= vhi)
    else:
        matched = _ranged(prefix, t.c.value, t.c.value, exact, exact, margin)
    if c.param is not None and c.param.type == "quantity" and len(parts) == 3:
        system, code = parts[1], parts[2]
        if system:
            matched = and_(matched, t.c.system == system)
        if code:
            matched = and_(matched, t.c.code == code)
    elif len(parts) != 1:
        raise SearchError(error("value", f"{c.name}: expected number[|system|code], got '{value}'", c.name))
    return matched


def _reference_form(value: str, modifier: str | None, c: Criterion, base: str) -> tuple[str, tuple[Any, ...]]:
    assert c.param is not None
    if modifier == "identifier":
        parts = _UNESCAPED_PIPE.split(value)
        if len(parts) == 1:
            return _code_form(unescape(parts[0]), None)
        system, ident = (unescape(p) for p in parts[:2])
        if not system:
            return _code_form(ident, None)
        form, args = _code_form(ident, system)
        return f"system {form}", (system, *args)
    text = value[len(base) + 1 :] if value.startswith(base + "/") else value
    local = _LOCAL_REFERENCE.fullmatch(text)
    targets = c.target_types or tuple(c.param.targets)
    if local:
        if targets and local.group(1) not in targets:
            raise SearchError(error("value", f"{c.name}: {local.group(1)} is not a target of '{c.param.code}'", c.name))
        return "local", (local.group(1), local.group(2))
    if _ID.fullmatch(text):
        return ("id of " + ",".join(targets) if targets else "id"), (text,)
    return "url", (text,)


def _reference_sql(t: FromClause, form: str, a: tuple[Any, ...]) -> ColumnElement[bool]:
    if form == "local":
        return and_(t.c.target_type == a[0], t.c.target_id == a[1])
    if form.startswith("id"):
        targets = form.removeprefix("id of ").split(",") if form != "id" else None
        typed = t.c.target_type.in_(targets) if targets else literal(True)
        return and_(typed, t.c.target_id == a[0])
    if form == "url":
        return t.c.url == a[0]
    if form.startswith("system "):  # :identifier with a system
        return and_(t.c.id_system == a[0], _code_sql(t.c.id_value, form.removeprefix("system "), a[1:]))
    return _code_sql(t.c.id_value, form, a)


#: Per parameter type: (index table, one search value, modifier, criterion, base) -> condition on a row.
Builder = Callable[[FromClause, str, str | None, Criterion, str], ColumnElement[bool]]
_BUILDERS: dict[str, Builder] = {"number": _number, "quantity": _number}
#: Per parameter type whose values come in forms: (value, modifier, criterion, base) -> (form, values),
#: and (index table, form, values or their bind parameters) -> condition on a row.
Classify = Callable[[str, str | None, Criterion, str], tuple[str, tuple[Any, ...]]]
Render = Callable[[FromClause, str, tuple[Any, ...]], ColumnElement[bool]]
_SHAPES: dict[str, tuple[Classify, Render]] = {
    "token": (_token_form, _token_sql),
    "string": (_string_form, _string_sql),
    "uri": (_uri_form, _uri_sql),
    "date": (_date_form, _date_sql),
    "reference": (_reference_form, _reference_sql),
}

"""Index rows for the current version of a resource, written in the writer's transaction."""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, Connection, FromClause, delete, literal

from fhir_node.search.fhirpath import Evaluator, compile_expression
from fhir_node.search.registry import SearchParam, registry
from fhir_node.search.values import EXTRACTORS, unwrap_extension
from fhir_node.store.batch import add_rows
from fhir_node.store.schema import INDEX_TABLES

_TABLES = {id(t): t for t in INDEX_TABLES.values()}
#: Reference parameters of a type whose rows overlap: a row both would write is written once, named
#: `a+b`, and stands for both (`param_names`). AuditEvent's `patient` is its Patient agents and entities:
#: the node's own search events name ~50 patients, so half of their index rows were these twice.
SHARED = {"AuditEvent": (("entity", "patient"), ("agent", "patient"))}
_NAMES: dict[tuple[str, str], tuple[str, ...]] = {}
for _type, _pairs in SHARED.items():
    for _a, _b in _pairs:
        for _code in (_a, _b):
            _NAMES[(_type, _code)] = (*_NAMES.get((_type, _code), (_code,)), f"{_a}+{_b}")


def param_names(res_type: str, code: str) -> tuple[str, ...]:
    """The `param` values of the index rows that stand for parameter `code` of `res_type`."""
    return _NAMES.get((res_type, code), (code,))


def param_is(table: FromClause, res_type: str, code: str) -> ColumnElement[bool]:
    """The rows of `table` that stand for parameter `code` of `res_type` (`SHARED` ones too); the names are
    literals, so a ready statement still binds them itself."""
    names = param_names(res_type, code)
    return table.c.param == names[0] if len(names) == 1 else table.c.param.in_([literal(n) for n in names])


#: Every column of each index table, None: the template of its rows (an extractor leaves some out); not
#: `rid`, which the insert looks up (`store.batch`).
_BLANK = {t.name: dict.fromkeys(c.name for c in t.columns if c.name != "rid") for t in INDEX_TABLES.values()}


@cache
def _plan(res_type: str) -> tuple[tuple[SearchParam, Evaluator], ...]:
    """The indexable parameters of a type with their compiled expressions (compiled once per process)."""
    return tuple(
        (p, compile_expression(p.expression)) for p in registry().of(res_type).values() if p.type in EXTRACTORS
    )


def rows(res_type: str, resource: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Rows per parameter type for one resource (duplicates removed, `SHARED` ones once), without the
    resource key columns."""
    out: dict[str, list[dict[str, Any]]] = {}
    by_param: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
    for param, evaluate in _plan(res_type):
        extract = EXTRACTORS[param.type]
        seen = by_param.setdefault(param.code, {})
        for value in evaluate(resource):
            for row in extract(unwrap_extension(value)):  # a new dict each, with its keys in one order
                key = tuple(row.items())
                if key not in seen:
                    seen[key] = row
                    row["param"] = param.code
                    out.setdefault(param.type, []).append(row)
    shared = [_share(by_param.get(a, {}), by_param.get(b, {}), a, b) for a, b in SHARED.get(res_type, ())]
    if any(shared):
        out["reference"] = [row for row in out["reference"] if row["param"]]
    return out


def _share(first: dict[Any, dict[str, Any]], second: dict[Any, dict[str, Any]], a: str, b: str) -> bool:
    """Each row that parameters `a` (rows `first`) and `b` (rows `second`) both have becomes one, named
    `a+b`: the first's renamed, the second's emptied for the caller to drop. Whether any was."""
    found = False
    for key, row in second.items():
        twin = first.get(key)
        if row["param"] == b and twin is not None and twin["param"] == a:
            twin["param"], row["param"], found = f"{a}+{b}", "", True
    return found


def write_index(conn: Connection, res_type: str, res_id: str, resource: dict[str, Any] | None, replace: bool) -> None:
    """Index `resource` (None: a deletion leaves no rows); `replace` drops the previous version's rows."""
    if replace:
        for table in _TABLES.values():
            conn.execute(delete(table).where(table.c.res_type == res_type, table.c.res_id == res_id))
    if resource is None:
        return
    for param_type, found in rows(res_type, resource).items():
        table = INDEX_TABLES[param_type]
        template = {**_BLANK[table.name], "res_type": res_type, "res_id": res_id}
        add_rows(conn, table, [{**template, **r} for r in found])

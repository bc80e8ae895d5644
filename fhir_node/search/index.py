"""Index rows for the current version of a resource, written in the writer's transaction."""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import Connection, delete

from fhir_node.search.fhirpath import Evaluator, compile_expression
from fhir_node.search.registry import SearchParam, registry
from fhir_node.search.values import EXTRACTORS, unwrap_extension
from fhir_node.store.batch import add_rows
from fhir_node.store.schema import INDEX_TABLES

_TABLES = {id(t): t for t in INDEX_TABLES.values()}
#: Every column of each index table, None: the template of its rows (an extractor leaves some out).
_BLANK = {t.name: dict.fromkeys(c.name for c in t.columns) for t in INDEX_TABLES.values()}


@cache
def _plan(res_type: str) -> tuple[tuple[SearchParam, Evaluator], ...]:
    """The indexable parameters of a type with their compiled expressions (compiled once per process)."""
    return tuple(
        (p, compile_expression(p.expression)) for p in registry().of(res_type).values() if p.type in EXTRACTORS
    )


def rows(res_type: str, resource: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Rows per parameter type for one resource (duplicates removed), without the resource key columns."""
    out: dict[str, list[dict[str, Any]]] = {}
    for param, evaluate in _plan(res_type):
        extract = EXTRACTORS[param.type]
        seen: set[tuple[Any, ...]] = set()
        for value in evaluate(resource):
            for row in extract(unwrap_extension(value)):  # a new dict each, with its keys in one order
                key = tuple(row.items())
                if key not in seen:
                    seen.add(key)
                    row["param"] = param.code
                    out.setdefault(param.type, []).append(row)
    return out


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

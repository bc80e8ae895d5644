"""history at instance, type and system level: newest first, `_since`, `_count`, stable next links."""

from __future__ import annotations

from urllib.parse import urlencode

from sqlalchemy import ColumnElement, Connection, and_, or_, true

from fhir_node.audit import trail
from fhir_node.bundles import bundle, history_entry
from fhir_node.datetimes import parse_instant
from fhir_node.interactions.incoming import check_id, single_values, whole_number
from fhir_node.node import Node
from fhir_node.outcome import fail
from fhir_node.registry import KINDS, kind, require
from fhir_node.security import policy
from fhir_node.store import repository
from fhir_node.store.schema import resources

#: `_cursor` is ours: the seq below which the next page starts, carried in the next link (no server state).
PARAMETERS = ("_since", "_count", "_cursor")
#: Types without history (the published guide, which the node writes itself): not in system history either.
_NO_HISTORY = tuple(k.name for k in KINDS.values() if not k.allows("history-type"))


def history(
    node: Node, base: str, params: list[tuple[str, str]], res_type: str | None = None, res_id: str | None = None
) -> bytes:
    """A `history` Bundle of one page; `params` are the query parameters left after _format/_pretty."""
    if res_type is not None:
        require(kind(res_type), "history-instance" if res_id else "history-type", "type")
    if res_id is not None:
        check_id(res_id)
    values = single_values(params, PARAMETERS, "history")
    since = parse_instant(values["_since"], "_since") if "_since" in values else None
    count = min(_positive(values.get("_count"), "_count") or node.settings.default_count, node.settings.max_count)
    cursor = _positive(values.get("_cursor"), "_cursor")
    with node.db.read() as conn:
        if res_type is not None and res_id is not None:
            policy.require(res_type, "r")
            trail.note(conn, [(res_type, res_id)])
            if repository.current(conn, res_type, res_id) is None:
                raise fail(404, "not-found", f"{res_type}/{res_id} is not known")
            policy.readable(conn, res_type, res_id, full=True)
        versions = repository.history(
            conn,
            res_type,
            res_id,
            since=since,
            before_seq=cursor,
            limit=count + 1,
            hidden=_NO_HISTORY,
            allowed=None if res_id is not None else _allowed(conn, res_type),
        )
        trail.note(conn, list(dict.fromkeys((v.res_type, v.res_id) for v in versions if not v.deleted)))
    path = "/".join(p for p in (base, res_type, res_id, "_history") if p)
    kept = {k: v for k, v in values.items() if k != "_cursor"}
    kept["_count"] = str(count)
    links = {"self": f"{path}?{urlencode(values | {'_count': str(count)})}"}
    if len(versions) > count:
        versions = versions[:count]
        links["next"] = f"{path}?{urlencode(kept | {'_cursor': str(versions[-1].seq)})}"
    return bundle("history", [history_entry(base, v) for v in versions], links)


def _allowed(conn: Connection, res_type: str | None) -> ColumnElement[bool] | None:
    """Type and system history show only the resources the caller may search, in full (no redacted
    versions); None: everything."""
    wanted = [res_type] if res_type is not None else [t for t in KINDS if t not in _NO_HISTORY]
    types = [t for t in wanted if res_type is not None or policy.reach(t, "s")]
    if not types:
        raise policy.forbidden()
    conditions = {t: policy.condition(conn, t, "s", full=True) for t in types}
    if types == wanted and all(c is None for c in conditions.values()):
        return None
    r = resources
    return or_(*(and_(r.c.res_type == t, c if c is not None else true()) for t, c in conditions.items()))


def _positive(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    number = whole_number(value)
    if number is None:
        raise fail(400, "value", f"{name} must be a positive integer (at most 18 digits), got '{value}'", name)
    return number

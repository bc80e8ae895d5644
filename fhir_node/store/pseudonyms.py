"""The stored pseudonyms and the key file, kept in step: the check at start, and `fhir-node rekey`, which
re-pseudonymises every stored version under the current key after a rotation (and SSINs stored in clear
by a node older than pseudonymisation). AuditEvents are left as written: the hash chain is their
evidence, so their keys stay in the key file until retention has removed them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import Column, ColumnElement, Table, and_, bindparam, func, or_, select, update

from fhir_node.registry import CONFORMANCE_TYPES
from fhir_node.rules.pseudonym import clear, protect
from fhir_node.search.index import write_index
from fhir_node.security.keyring import KeyProblem, Keyring
from fhir_node.security.relationships import SSIN
from fhir_node.store.database import Database
from fhir_node.store.schema import idx_token, resource_versions, resources

_LEFT_AS_WRITTEN = ("AuditEvent", *CONFORMANCE_TYPES)


def check_keys(db: Database, ring: Keyring) -> None:
    """KeyProblem if the stored Patients' SSINs are pseudonyms of a key the file lacks (a lost or wrong key
    file: they could be neither searched nor shown), or rest in clear (stored before pseudonymisation)."""
    t = idx_token.c
    head = func.substr(t.code, 1, 9)
    q = select(head).where(t.res_type == "Patient", t.param == "identifier", t.system == SSIN).distinct()
    with db.read() as conn:
        heads = set(conn.scalars(q))
    unknown = sorted(h[:8] for h in heads if h.endswith(".") and h[:8] not in ring.kids)
    if unknown:
        raise KeyProblem(
            f"the database holds SSIN pseudonyms made with key(s) {', '.join(unknown)}, which the key file lacks "
            f"(it has {', '.join(sorted(ring.kids))}): point FHIR_NODE_PSEUDONYM_KEY_FILE at the node's key file"
        )
    if any(not h.endswith(".") for h in heads):
        raise KeyProblem("the database holds SSINs in clear: run `fhir-node rekey` once to pseudonymise them")


def rekey(db: Database, batch: int = 500, progress: Callable[[int], None] | None = None) -> int:
    """Re-pseudonymise every stored version (but AuditEvents and the published guide) under the current key,
    and re-index the current ones; one transaction per batch. How many rows changed."""
    rv, r = resource_versions.c, resources.c
    changed = _rewrite(db, resource_versions, (rv.seq,), batch, progress)
    return changed + _rewrite(db, resources, (r.res_type, r.res_id), batch, progress)


def _rewrite(
    db: Database, table: Table, keys: tuple[Column[Any], ...], batch: int, progress: Callable[[int], None] | None
) -> int:
    c = table.c
    same_row = and_(*(col == bindparam(f"k_{col.name}") for col in keys))
    changed = 0
    after: tuple[Any, ...] | None = None
    while True:
        q = select(*keys, c.res_type, c.res_id, c.content).where(
            c.content.is_not(None), c.res_type.not_in(_LEFT_AS_WRITTEN)
        )
        if after is not None:
            q = q.where(_beyond(keys, after))
        with db.write() as conn:
            rows = conn.execute(q.order_by(*keys).limit(batch)).all()
            for row in rows:
                stored = orjson.loads(row.content)
                again = protect(clear(stored))
                if again == stored:
                    continue
                values = {f"k_{col.name}": row._mapping[col.name] for col in keys}
                conn.execute(update(table).where(same_row), {**values, "content": orjson.dumps(again)})
                if table is resources:
                    write_index(conn, row.res_type, row.res_id, again, replace=True)
                changed += 1
        if not rows:
            return changed
        after = tuple(rows[-1]._mapping[col.name] for col in keys)
        if progress:
            progress(changed)


def _beyond(keys: tuple[Column[Any], ...], after: tuple[Any, ...]) -> ColumnElement[bool]:
    """Rows after `after` in `keys` order (a keyset: batches are not shifted by the rewrites)."""
    first, *rest = keys
    if not rest:
        return first > after[0]
    return or_(first > after[0], and_(first == after[0], _beyond(tuple(rest), after[1:])))

"""`fhir-node reindex`: rebuild every index row from the stored current versions, after the search
parameter definitions changed. Batched, one transaction per batch, so a large store is not locked long."""

from __future__ import annotations

from collections.abc import Callable

import orjson
from sqlalchemy import and_, false, select

from fhir_node.search.index import write_index
from fhir_node.store.database import Database
from fhir_node.store.schema import resources


def reindex(db: Database, batch: int = 500, progress: Callable[[int], None] | None = None) -> int:
    """Re-extract the index rows of every live resource, in (type, id) order; returns how many."""
    done = 0
    after = ("", "")
    while True:
        with db.write() as conn:
            rows = conn.execute(
                select(resources.c.res_type, resources.c.res_id, resources.c.content)
                .where(
                    resources.c.deleted == false(),
                    (resources.c.res_type > after[0])
                    | and_(resources.c.res_type == after[0], resources.c.res_id > after[1]),
                )
                .order_by(resources.c.res_type, resources.c.res_id)
                .limit(batch)
            ).all()
            for row in rows:
                write_index(conn, row.res_type, row.res_id, orjson.loads(row.content), replace=True)
        if not rows:
            return done
        done += len(rows)
        after = (rows[-1].res_type, rows[-1].res_id)
        if progress:
            progress(done)

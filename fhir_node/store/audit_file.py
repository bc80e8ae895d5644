"""On SQLite, the AuditEvent hash chain in a file of its own beside the database (`fhir-node.db` ->
`fhir-node.audit.db`), attached to every connection as `audit`. Its commits wait for no write to the
database (the audit writer chains the workers' journals, `store.audit_journal`, whatever writes are under
way), and they leave the page cache of the database's readers alone (a commit to a WAL file empties every
other reader's: +3-6 % audited searches per second on its own, 2026-11-30). Unqualified names find the
chain's tables there, so the queries are the same on SQLite and PostgreSQL.

No transaction writes both files: SQLite commits the files of one WAL transaction one after the other (the
database first), so a crash between would keep half. A write's AuditEvent, which must commit with the write,
is staged in the database (`audit_outbox`) and chained from there (`audit.chain`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from sqlalchemy import Connection, Engine, MetaData, Table

from fhir_node.store.schema import audit_anchor, audit_chain

log = logging.getLogger("fhir_node.errors")
#: The tables that live in the chain's file.
MOVED = (audit_chain, audit_anchor)


def audit_file(database: str) -> Path:
    """The chain's file for a SQLite database file."""
    path = Path(database)
    return path.with_name(f"{path.stem}.audit{path.suffix}")


def set_aside_orphan(database: str) -> None:
    """A chain file left without its database (the database removed, not it) belongs to no database this
    node has: renamed aside (`.orphan-<time>`, kept as evidence), so that a new database starts a chain of
    its own instead of taking over the old one."""
    chain_file = audit_file(database)
    if Path(database).exists() or not chain_file.exists():
        return
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for suffix in ("", "-wal", "-shm", "-journals"):  # the journals too: else the new chain takes their events
        found = Path(f"{chain_file}{suffix}")
        if found.exists():
            found.rename(f"{chain_file}.orphan-{stamp}{suffix}")
    log.warning("%s had no database beside it: set aside as %s.orphan-%s", chain_file, chain_file, stamp)


def apart(conn: Connection) -> bool:
    """Whether the chain on `conn` lives in a file of its own, attached to it (noted when it connected)."""
    return bool(conn.connection.info.get("audit_apart"))


def move_chain(engine: Engine, chain_file: Path | None) -> None:
    """Move the chain's rows that migration 0007 set aside in the database into the chain's file (None: the
    chain stays in the database): copied in one transaction (the chain's file only), then dropped in another
    (the database only). After a crash, running it again copies what is missing and nothing twice."""
    if chain_file is None:
        return
    with engine.begin() as conn:
        moved = [table for table in MOVED if f"{table.name}_moved" in _tables(conn, "main")]
        if not moved and audit_chain.name not in _tables(conn, "audit"):
            raise RuntimeError(
                f"{chain_file} holds no AuditEvent chain: restore it from the backup of the database it belongs to"
            )
        for table in moved:
            copy_table(conn, table, f"main.{table.name}_moved", "audit", "INSERT OR IGNORE")
        # AUTOINCREMENT's high-water mark, so that no position is used twice, even after a purge emptied it.
        high = conn.exec_driver_sql(
            "SELECT seq FROM main.sqlite_sequence WHERE name = ?", (f"{audit_chain.name}_moved",)
        ).scalar()
        if high is not None:
            conn.exec_driver_sql("DELETE FROM audit.sqlite_sequence WHERE name = ?", (audit_chain.name,))
            conn.exec_driver_sql(
                "INSERT INTO audit.sqlite_sequence (name, seq) VALUES (?, ?)", (audit_chain.name, high)
            )
    with engine.begin() as conn:
        for table in moved:
            conn.exec_driver_sql(f"DROP TABLE main.{table.name}_moved")


def copy_table(conn: Connection, table: Table, source: str, schema: str, insert: str = "INSERT") -> None:
    """`table` made in `schema` (unless there) and filled with the rows of `source`, column by column."""
    table.to_metadata(MetaData(), schema=schema).create(conn, checkfirst=True)
    columns = ", ".join(c.name for c in table.columns)
    conn.exec_driver_sql(f"{insert} INTO {schema}.{table.name} ({columns}) SELECT {columns} FROM {source}")


def _tables(conn: Connection, schema: str) -> set[str]:
    return {row[0] for row in conn.exec_driver_sql(f"SELECT name FROM {schema}.sqlite_master WHERE type = 'table'")}

"""On SQLite the node reads the database file through a memory map (`database.MMAP_BYTES`): the OS's page
cache, shared by every connection and worker, instead of a read() into each connection's own 2 MB cache."""

from __future__ import annotations

from pathlib import Path

from test_audit_chain import database

from fhir_node.store.database import MMAP_BYTES


def test_every_connection_reads_the_database_through_a_memory_map(tmp_path: Path) -> None:
    with database(f"sqlite:///{tmp_path / 'node.db'}") as db:
        db.migrate()
        with db.read() as reader, db.write() as writer:
            for conn in (reader, writer):
                assert conn.exec_driver_sql("PRAGMA main.mmap_size").scalar() == MMAP_BYTES

"""The tables. Alembic migrations create them; this module is what the code queries."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    UniqueConstraint,
    text,
)

metadata = MetaData()

# BigInteger primary keys autoincrement on PostgreSQL; SQLite only does it for INTEGER, hence the variant.
SeqType = BigInteger().with_variant(Integer(), "sqlite")

resources = Table(
    "resources",
    metadata,
    Column("rid", SeqType, primary_key=True, autoincrement=True),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=False), nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("content", LargeBinary, nullable=True),
    UniqueConstraint("res_type", "res_id", name="uq_resources_resource"),
    comment="The current version of each resource, with its JSON bytes exactly as served; rid, its row's "
    "number, is what index rows join it by (on SQLite the table's own key: one lookup, not two).",
    sqlite_autoincrement=True,  # never reuse a number: an index row can only ever name its own resource
)

resource_versions = Table(
    "resource_versions",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=False), nullable=False),
    Column("method", String(8), nullable=False),
    Column("status", Integer, nullable=False),
    Column("content", LargeBinary, nullable=True),
    UniqueConstraint("res_type", "res_id", "version_id", name="uq_resource_versions_version"),
    Index("ix_resource_versions_type_seq", "res_type", "seq"),
    Index("ix_resource_versions_last_updated", "last_updated"),
    comment="Every version ever written (content NULL for a delete); seq orders history and pages it.",
)


def _index_table(
    name: str,
    *columns: Column,
    indexes: tuple[tuple[str, ...], ...],
    comment: str,
    resource_extra: tuple[str, ...] = (),
    sparse: tuple[str, ...] = (),
) -> Table:
    """A search index table: one row per (resource, parameter, value) of the current version only; its
    resource index (type, id, param) carries `resource_extra` too, so a lookup of a row's own values is
    answered from the index alone (and planners without statistics pick it). An index led by a `sparse`
    column (mostly NULL) holds only the rows that have one (`sparse_index`). An index whose rows come in
    id order (ending with res_id) carries the resource's `rid` too: a search walking it joins each row to
    its resource from the index alone (`_walked`)."""
    return Table(
        name,
        metadata,
        Column("res_type", String(64), nullable=False),
        Column("res_id", String(64), nullable=False),
        Column("param", String(64), nullable=False),
        *columns,
        Column("rid", SeqType, nullable=False),
        Index(f"ix_{name}_resource", "res_type", "res_id", "param", *resource_extra),
        *(
            sparse_index(f"ix_{name}_{'_'.join(cols)}", _walked(cols))
            if cols[0] in sparse
            else Index(f"ix_{name}_{'_'.join(cols)}", "res_type", "param", *_walked(cols))
            for cols in indexes
        ),
        comment=comment,
    )


def _walked(cols: tuple[str, ...]) -> tuple[str, ...]:
    """An index's columns, `rid` after them when its rows come in id order (see `_index_table`)."""
    return (*cols, "rid") if cols[-1] == "res_id" else cols


def sparse_index(name: str, cols: tuple[str, ...]) -> Index:
    """An index on (res_type, param, *cols) of the rows whose cols[0] is not NULL: a search on that column
    (=, IN, LIKE) implies as much, so both planners use it, and the rows without one, most of them (an
    AuditEvent's ~60 references have no URL and no identifier), cost no entry: indexing an AuditEvent
    took 1,846-1,907 us with full indexes, 1,478-1,527 us with these (2026-11-30)."""
    where = text(f"{cols[0]} IS NOT NULL")
    return Index(name, "res_type", "param", *cols, sqlite_where=where, postgresql_where=where)


idx_token = _index_table(
    "idx_token",
    Column("system", String(255), nullable=True),
    Column("code", String(255), nullable=True),
    Column("text", String(255), nullable=True),
    Column("type_system", String(255), nullable=True),
    Column("type_code", String(255), nullable=True),
    indexes=(("code", "res_id"), ("text",)),
    sparse=("text",),
    comment="token: system|code (identifiers, codes, booleans); text = normalised display, type = Identifier.type",
)
idx_string = _index_table(
    "idx_string",
    Column("value", String(255), nullable=False),
    Column("exact", String(255), nullable=False),
    indexes=(("value",), ("exact", "res_id")),
    comment="string: value is case- and accent-folded for the default and :contains, exact for :exact",
)
idx_date = _index_table(
    "idx_date",
    Column("low", DateTime(timezone=False), nullable=False),
    Column("high", DateTime(timezone=False), nullable=False),
    indexes=(("low", "high"),),
    resource_extra=("low", "high"),
    comment="date: the closed range [low, high] a value covers, naive UTC; open ends hold MIN/MAX sentinels",
)
idx_reference = _index_table(
    "idx_reference",
    Column("target_type", String(64), nullable=True),
    Column("target_id", String(64), nullable=True),
    Column("url", String(1024), nullable=True),
    Column("id_system", String(255), nullable=True),
    Column("id_value", String(255), nullable=True),
    indexes=(("target_type", "target_id", "res_id"), ("url", "res_id"), ("id_value", "res_id")),
    resource_extra=("target_type", "target_id"),
    sparse=("url", "id_value"),
    comment="reference: local targets as type/id; other URLs and canonicals in url; Reference.identifier",
)
idx_uri = _index_table(
    "idx_uri",
    Column("uri", String(1024), nullable=False),
    indexes=(("uri", "res_id"),),
    comment="uri: the value as written",
)
idx_number = _index_table(
    "idx_number",
    Column("value", Numeric(precision=38, scale=18), nullable=False),
    Column("low", Numeric(precision=38, scale=18), nullable=False),
    Column("high", Numeric(precision=38, scale=18), nullable=False),
    Column("system", String(255), nullable=True),
    Column("code", String(255), nullable=True),
    indexes=(("value",),),
    comment="number and quantity: value, its precision range [low, high], and for quantities system|code",
)

INDEX_TABLES = {
    "token": idx_token,
    "string": idx_string,
    "date": idx_date,
    "reference": idx_reference,
    "uri": idx_uri,
    "number": idx_number,
    "quantity": idx_number,
}

audit_chain = Table(
    "audit_chain",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("res_id", String(64), nullable=False, unique=True),
    Column("hash", String(64), nullable=False),
    Column("recorded", DateTime(timezone=False), nullable=True),
    Column("content", LargeBinary, nullable=True),
    comment="The node's own AuditEvents in the order written: each one's SHA-256, time and chained bytes (its "
    "facts, or until 2026-12-01 the whole event); each carries its predecessor's hash, so a changed or removed "
    "event breaks the chain (fhir-node audit verify). An event is searchable once indexed (audit_indexed).",
    sqlite_autoincrement=True,  # never reuse a position, even once retention emptied the table
)

audit_outbox = Table(
    "audit_outbox",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("res_id", String(64), nullable=False, unique=True),
    Column("recorded", DateTime(timezone=False), nullable=False),
    Column("content", LargeBinary, nullable=False),
    comment="On SQLite, where the chain has a file of its own: a write's AuditEvent, committed with the write "
    "and chained from here by the audit writer (the chain's res_id says which are); emptied when indexing.",
)

audit_anchor = Table(
    "audit_anchor",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("seq", SeqType, nullable=False),
    Column("hash", String(64), nullable=False),
    comment="Where verification starts once retention removed the oldest events: the last removed one.",
)

audit_indexed = Table(
    "audit_indexed",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("seq", SeqType, nullable=False),
    comment="The chain position up to which the node's AuditEvents are stored and indexed as resources.",
)

research_consented = Table(
    "research_consented",
    metadata,
    Column("patient_id", String(64), primary_key=True),
    comment="The Patients whose latest research consent is an active permit (rules.research_consent), kept "
    "in step by every write of a Consent or Patient in its own transaction: one key probe per row filters "
    "the aggregator's searches, where the definition itself takes ~20 index probes.",
)

export_jobs = Table(
    "export_jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", LargeBinary, nullable=False),
    Column("request", String(2048), nullable=False),
    Column("types", String(1024), nullable=False),
    Column("since", DateTime(timezone=False), nullable=True),
    Column("members", LargeBinary, nullable=True),
    Column("transaction_time", DateTime(timezone=False), nullable=False),
    Column("status", String(16), nullable=False),
    Column("type_index", Integer, nullable=False),
    Column("cursor", String(64), nullable=True),
    Column("exported", Integer, nullable=False),
    Column("lease_until", DateTime(timezone=False), nullable=True),
    Column("error", String(2048), nullable=True),
    Column("finished", DateTime(timezone=False), nullable=True),
    Index("ix_export_jobs_status", "status", "lease_until"),
    comment="Bulk Data export jobs: who asked (owner: the principal, JSON), what (types, since, the Group's "
    "members), where the export stands (type_index, cursor: the last id written), so any worker resumes it.",
)

export_files = Table(
    "export_files",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("job_id", String(64), nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("part", Integer, nullable=False),
    Column("count", Integer, nullable=False),
    Column("content", LargeBinary, nullable=False),
    Index("ix_export_files_job", "job_id", "res_type", "part", "seq"),
    comment="The NDJSON of export jobs, one segment per step: a file is the segments of (job, type, part) in "
    "seq order. In the database, so every worker serves every file.",
)

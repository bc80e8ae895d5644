"""`fhir-node audit verify` and `fhir-node audit purge`: the operator's checks on the AuditEvent hash chain
(fhir_node/audit/chain.py), run against the database directly, with or without a node serving it; and
`fhir-node audit follow`, which chains what the workers journal (`audit.follower`)."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any


def add_parser(sub: Any) -> None:
    """Register `audit verify`, `audit purge` and `audit follow` on the `fhir-node` command. Imports are deferred, here
    and below: fhir_node.cli imports this module, and every other command would pay for the store's."""
    from fhir_node.cli import _add_setting_flags

    audit = sub.add_parser("audit", help="check or prune the node's AuditEvent hash chain")
    actions = audit.add_subparsers(dest="action", required=True)
    p = actions.add_parser("verify", help="walk the hash chain; exit 1 at the first changed or removed AuditEvent")
    _add_setting_flags(p)
    p.set_defaults(run=verify)
    p = actions.add_parser("purge", help="remove AuditEvents older than FHIR_NODE_AUDIT_RETENTION_DAYS")
    _add_setting_flags(p)
    p.set_defaults(run=purge)
    p = actions.add_parser(
        "follow",
        help="chain the workers' AuditEvent journals as they fill (SQLite), until stopped; `serve` runs one itself",
    )
    _add_setting_flags(p)
    p.add_argument("--until-stdin-closes", action="store_true", help="also stop when standard input closes")
    p.set_defaults(run=follow)


def verify(args: argparse.Namespace) -> int:
    """One snapshot for the whole walk, whatever the workers append meanwhile: on PostgreSQL a REPEATABLE
    READ transaction (under READ COMMITTED each page would see a purge committed since as a break)."""
    from fhir_node.audit import chain
    from fhir_node.cli import _settings
    from fhir_node.store.database import Database

    db = Database(_settings(args).database_url)
    engine = db.engine if db.is_sqlite else db.engine.execution_options(isolation_level="REPEATABLE READ")
    try:
        chain.settle(db)  # writes' AuditEvents staged with no node running to chain them
        with engine.begin() as conn:
            checked, head, broken = chain.verify(conn)
    finally:
        db.dispose()
    if broken is not None:
        print(f"fhir-node: audit chain broken at {broken}")
        return 1
    print(f"fhir-node: audit chain intact: {checked} events, head {head}")
    return 0


def purge(args: argparse.Namespace) -> int:
    """The chain's entries and the anchor's move commit together, or neither does (`chain.purge`)."""
    from fhir_node.audit import chain
    from fhir_node.cli import _settings
    from fhir_node.store.database import Database
    from fhir_node.store.repository import instant, now

    settings = _settings(args)
    before = now() - timedelta(days=settings.audit_retention_days)
    db = Database(settings.database_url)
    try:
        removed = chain.purge(db, before)
    finally:
        db.dispose()
    print(f"fhir-node: purged {removed} AuditEvents recorded before {instant(before)}")
    return 0


def follow(args: argparse.Namespace) -> int:
    """Until SIGTERM or SIGINT (or, with --until-stdin-closes, the end of standard input: how `serve` ties
    its follower to itself, whatever way it ends)."""
    import signal
    import sys
    import threading

    from fhir_node.audit.follower import follow as run
    from fhir_node.cli import _settings
    from fhir_node.logs import configure
    from fhir_node.store.database import Database

    settings = _settings(args)
    configure(settings.log_level)
    db = Database(settings.database_url)
    if db.journals is None:
        db.dispose()
        print("fhir-node: nothing to follow: only SQLite has AuditEvent journals", file=sys.stderr)
        return 2
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    if args.until_stdin_closes:
        threading.Thread(target=lambda: (sys.stdin.buffer.read(), stopped.set()), daemon=True).start()
    try:
        run(db, stopped)
    finally:
        db.dispose()
    return 0

"""The `fhir-node` command: serve, migrate, reindex, load, synth. Flags override the FHIR_NODE_* environment."""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn

from fhir_node import load, synth
from fhir_node.api.middleware import is_loopback
from fhir_node.conformance import package
from fhir_node.settings import Settings
from fhir_node.validation import cli as validation_cli

#: CLI flags that map onto settings; they are exported as FHIR_NODE_* so every worker process sees them.
_SETTING_FLAGS = ("database_url", "auth", "enforce_profiles", "max_body_bytes", "base_url", "log_level")


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for name in _SETTING_FLAGS:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, help=f"overrides FHIR_NODE_{name.upper()}")


def _settings(args: argparse.Namespace) -> Settings:
    for name in _SETTING_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            os.environ[f"FHIR_NODE_{name.upper()}"] = str(value)
    return Settings()


def serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    host = args.host if args.host not in ("localhost",) else "127.0.0.1"
    if settings.auth == "none" and not is_loopback(host):
        print(f"fhir-node: FHIR_NODE_AUTH=none may only listen on a loopback address, not {host}", file=sys.stderr)
        return 2
    from fhir_node.logs import configure

    configure(settings.log_level)
    from fhir_node.node import Node

    Node.from_settings(settings).db.dispose()  # migrate once, before any worker starts
    os.environ["FHIR_NODE_AUTO_MIGRATE"] = "false"
    uvicorn.run(
        "fhir_node.app:create_app",
        factory=True,
        host=host,
        port=args.port,
        workers=args.workers,
        access_log=False,
        log_config=None,
        proxy_headers=False,
    )
    return 0


def migrate(args: argparse.Namespace) -> int:
    from fhir_node.node import Node
    from fhir_node.store.database import Database

    settings = _settings(args)
    node = Node(settings, Database(settings.database_url))
    node.migrate()
    node.db.dispose()
    print(f"fhir-node: database at {settings.database_url} is up to date, published guide synchronised")
    return 0


def reindex(args: argparse.Namespace) -> int:
    from fhir_node.search.reindex import reindex as rebuild
    from fhir_node.store.database import Database

    settings = _settings(args)
    db = Database(settings.database_url)
    db.migrate()
    count = rebuild(db, progress=lambda n: print(f"fhir-node: {n} resources reindexed", file=sys.stderr))
    print(f"fhir-node: reindexed {count} resources")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fhir-node", description="FHIR R4 node of a BIHR data holder")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="serve the FHIR API until stopped")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=1, help="worker processes (share one database)")
    _add_setting_flags(p)
    p.set_defaults(run=serve)
    p = sub.add_parser("migrate", help="create or upgrade the database schema, store the published guide")
    _add_setting_flags(p)
    p.set_defaults(run=migrate)
    p = sub.add_parser("reindex", help="rebuild the search index rows after search parameters changed")
    _add_setting_flags(p)
    p.set_defaults(run=reindex)
    validation_cli.add_parser(sub)
    load.add_parser(sub)
    synth.add_parser(sub)
    package.add_parser(sub)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())

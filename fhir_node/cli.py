"""The `fhir-node` command: serve, migrate, reindex, keygen, rekey, load, synth. Flags override the
FHIR_NODE_* environment."""

from __future__ import annotations

import argparse
import contextlib
import functools
import ipaddress
import os
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from fhir_node import load, synth
from fhir_node.api.middleware import is_loopback
from fhir_node.api.protocol import BoundedHead
from fhir_node.audit import cli as audit_cli
from fhir_node.conformance import package
from fhir_node.federation import cli as federation_cli
from fhir_node.security.keyring import Keyring
from fhir_node.settings import Settings
from fhir_node.validation import cli as validation_cli

#: CLI flags that map onto settings; they are exported as FHIR_NODE_* so every worker process sees them.
_SETTING_FLAGS = (
    "database_url",
    "auth",
    "enforce_profiles",
    "max_body_bytes",
    "base_url",
    "log_level",
    "tls_proxy",
    "allowed_hosts",
)


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for name in _SETTING_FLAGS:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, help=f"overrides FHIR_NODE_{name.upper()}")


def _settings(args: argparse.Namespace) -> Settings:
    for name in _SETTING_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            os.environ[f"FHIR_NODE_{name.upper()}"] = str(value)
    return Settings()


def tls_proxies(settings: Settings) -> list[str]:
    """The addresses (or networks) in FHIR_NODE_TLS_PROXY."""
    return [proxy.strip() for proxy in (settings.tls_proxy or "").split(",") if proxy.strip()]


def startup_problem(settings: Settings, host: str, tls: bool) -> str | None:
    """Why the node must not listen on `host` with these settings (`tls`: it serves HTTPS itself), or None.
    Bearer tokens and health data must not cross a network in clear, and an open node must stay local."""
    for proxy in tls_proxies(settings):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            return f"FHIR_NODE_TLS_PROXY: {proxy!r} is not an IP address or network"
    if settings.auth == "none":
        return None if is_loopback(host) else f"FHIR_NODE_AUTH=none may only listen on a loopback address, not {host}"
    missing = [name for name in ("jwt_jwks", "jwt_issuer", "jwt_audience") if not getattr(settings, name)]
    if missing:
        return "FHIR_NODE_AUTH=jwt needs " + ", ".join(f"FHIR_NODE_{name.upper()}" for name in missing)
    if not (tls or tls_proxies(settings) or is_loopback(host)):
        return (
            f"FHIR_NODE_AUTH=jwt on {host} needs TLS: pass --ssl-certfile and --ssl-keyfile, "
            "or set FHIR_NODE_TLS_PROXY to the proxies that terminate TLS in front of the node"
        )
    return None


def tls_problem(certfile: str | None, keyfile: str | None, ca_certs: str | None) -> str | None:
    """Why these TLS files cannot be served, found before migrating rather than when uvicorn loads them."""
    if certfile is None:
        return "--ssl-keyfile and --ssl-ca-certs need --ssl-certfile" if keyfile or ca_certs else None
    if keyfile is None:
        return "--ssl-certfile needs --ssl-keyfile"
    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile), ("--ssl-ca-certs", ca_certs)):
        if path is not None and not Path(path).is_file():
            return f"{flag} {path}: no such file"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile, password="")  # an encrypted key fails instead of prompting
        if ca_certs:
            context.load_verify_locations(ca_certs)
    except OSError as exc:
        return f"cannot load the TLS certificate, key or CA certificates: {exc}"
    return None


def _tls_1_2_or_later(_config: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """uvicorn's own context, held at TLS 1.2 or later whatever the Python or OpenSSL defaults."""
    context = default()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def uvicorn_tls_options(certfile: str | None, keyfile: str | None, ca_certs: str | None) -> dict[str, Any]:
    """HTTPS when a certificate is given; with a CA, client certificates (system clients) are asked for and
    verified, but optional: people come with a bearer token only."""
    if certfile is None:
        return {}
    return {
        "ssl_certfile": certfile,
        "ssl_keyfile": keyfile,
        "ssl_ca_certs": ca_certs,
        "ssl_cert_reqs": ssl.CERT_OPTIONAL if ca_certs else ssl.CERT_NONE,
        "ssl_context_factory": _tls_1_2_or_later,
    }


def uvicorn_proxy_options(settings: Settings) -> dict[str, Any]:
    """Trust X-Forwarded-* from the TLS proxies, and only from them; from nobody when there are none."""
    proxies = tls_proxies(settings)
    return {"proxy_headers": True, "forwarded_allow_ips": proxies} if proxies else {"proxy_headers": False}


def uvicorn_edge_options(settings: Settings) -> dict[str, Any]:
    """No `server` banner; the request head bounded in size and time (see `api.protocol`)."""
    http = functools.partial(
        BoundedHead, head_limit=settings.max_header_bytes, head_timeout=settings.header_timeout_seconds
    )
    return {"server_header": False, "http": http}


def serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    host = args.host if args.host not in ("localhost",) else "127.0.0.1"
    problem = tls_problem(args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certs) or startup_problem(
        settings, host, tls=args.ssl_certfile is not None
    )
    if problem:
        print(f"fhir-node: {problem}", file=sys.stderr)
        return 2
    from fhir_node.logs import config, configure

    configure(settings.log_level)
    from fhir_node.node import Node
    from fhir_node.security.keyring import KeyProblem

    try:
        db = Node.from_settings(settings).db  # migrate once, before any worker starts
    except KeyProblem as exc:
        print(f"fhir-node: {exc}", file=sys.stderr)
        return 2
    db.dispose()
    os.environ["FHIR_NODE_AUTO_MIGRATE"] = "false"
    from fhir_node.audit.follower import beside

    with beside() if settings.audit and db.journals is not None else contextlib.nullcontext():
        uvicorn.run(
            "fhir_node.app:create_app",
            factory=True,
            host=host,
            port=args.port,
            workers=args.workers,
            access_log=False,
            log_config=config(settings.log_level),
            **uvicorn_tls_options(args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certs),
            **uvicorn_proxy_options(settings),
            **uvicorn_edge_options(settings),
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


def retention(args: argparse.Namespace) -> int:
    """Without --apply, only list what would go (a dry run is the default: removal cannot be undone)."""
    from fhir_node.rules.retention import cutoff, run
    from fhir_node.store.database import Database
    from fhir_node.store.repository import instant, now

    settings = _settings(args)
    if _keys(settings) is None:
        return 2
    before = cutoff(now().date(), settings.inclusion_retention_years)
    db = Database(settings.database_url)
    db.migrate()
    try:
        done = run(db, before, apply=args.apply)
    finally:
        db.dispose()
    verb = "removed" if args.apply else "would remove (dry run; --apply removes)"
    for res_type, ids in (("EpisodeOfCare", done.inclusions), ("Patient", done.patients)):
        for res_id in ids:
            print(f"{res_type}/{res_id}")
    print(
        f"fhir-node: {verb} {len(done.inclusions)} inclusions excluded before {instant(before)[:10]} "
        f"and {len(done.patients)} patients nothing else refers to"
        + (f"; AuditEvents carry X-Request-Id {done.run_id}" if args.apply and done.inclusions else ""),
        file=sys.stderr,
    )
    return 0


def _keys(settings: Settings) -> Keyring | None:
    """The node's SSIN pseudonym keys, installed for a command that reads or writes stored SSINs; None (said
    on stderr) when they cannot be loaded."""
    from fhir_node.security import keyring

    try:
        ring = keyring.keyring_for(settings)
    except keyring.KeyProblem as exc:
        print(f"fhir-node: {exc}", file=sys.stderr)
        return None
    keyring.install(ring)
    return ring


def keygen(args: argparse.Namespace) -> int:
    from fhir_node.security.keyring import KeyProblem
    from fhir_node.security.keyring import keygen as write_key

    try:
        kid = write_key(Path(args.path), rotate=args.rotate)
    except KeyProblem as exc:
        print(f"fhir-node: {exc}", file=sys.stderr)
        return 2
    done = "added to" if args.rotate else "written to"
    print(f"fhir-node: pseudonym key {kid} {done} {args.path} (readable by its owner only)")
    return 0


def rekey(args: argparse.Namespace) -> int:
    from fhir_node.store.database import Database
    from fhir_node.store.pseudonyms import rekey as rewrite

    settings = _settings(args)
    ring = _keys(settings)
    if ring is None:
        return 2
    db = Database(settings.database_url)
    db.migrate()
    count = rewrite(db, progress=lambda n: print(f"fhir-node: {n} versions re-pseudonymised", file=sys.stderr))
    db.dispose()
    print(f"fhir-node: {count} stored versions re-pseudonymised under key {ring.current}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fhir-node", description="FHIR R4 node of a BIHR data holder")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="serve the FHIR API until stopped")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=1, help="worker processes (share one database)")
    p.add_argument("--ssl-certfile", help="serve HTTPS (TLS 1.2 or later) with this PEM certificate (chain)")
    p.add_argument("--ssl-keyfile", help="the certificate's PEM private key (not encrypted)")
    p.add_argument("--ssl-ca-certs", help="PEM CA certificates: ask clients for a certificate and verify it")
    _add_setting_flags(p)
    p.set_defaults(run=serve)
    p = sub.add_parser("migrate", help="create or upgrade the database schema, store the published guide")
    _add_setting_flags(p)
    p.set_defaults(run=migrate)
    p = sub.add_parser("reindex", help="rebuild the search index rows after search parameters changed")
    _add_setting_flags(p)
    p.set_defaults(run=reindex)
    p = sub.add_parser(
        "retention",
        help="remove inclusions excluded more than FHIR_NODE_INCLUSION_RETENTION_YEARS ago, and their patients",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", dest="apply", action="store_false", help="list what would be removed (default)")
    mode.add_argument("--apply", dest="apply", action="store_true", help="remove it, one AuditEvent per removal")
    _add_setting_flags(p)
    p.set_defaults(run=retention, apply=False)
    p = sub.add_parser("keygen", help="write a new SSIN pseudonym key file, or add a new key to one (--rotate)")
    p.add_argument("path", help="the key file (FHIR_NODE_PSEUDONYM_KEY_FILE)")
    p.add_argument("--rotate", action="store_true", help="put a new current key first, keep the older ones")
    p.set_defaults(run=keygen)
    p = sub.add_parser("rekey", help="re-pseudonymise the stored SSINs under the key file's current key")
    _add_setting_flags(p)
    p.set_defaults(run=rekey)
    validation_cli.add_parser(sub)
    load.add_parser(sub)
    audit_cli.add_parser(sub)
    synth.add_parser(sub)
    package.add_parser(sub)
    federation_cli.add_parser(sub)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["federate"]:
        return federation_cli.main(argv[1:])  # its own parser: a usage error is exit 1 there, 2 means partial
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())

"""A PostgreSQL server for the test suite, and a fresh empty database per test.

The server is either the one named by ``FHIR_NODE_TEST_POSTGRES_URL`` (its user must be allowed
to CREATE DATABASE) or a throwaway cluster that lives in a temporary directory for one test session.
Everything here is independent of pytest so that benchmarks and scripts can reuse it; the policy of
skipping or failing when PostgreSQL is missing lives in ``conftest.py``.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from sqlalchemy import URL, Engine, create_engine, make_url
from sqlalchemy.exc import SQLAlchemyError

URL_ENV = "FHIR_NODE_TEST_POSTGRES_URL"
REQUIRE_ENV = "FHIR_NODE_REQUIRE_POSTGRES"
BINDIR_ENV = "FHIR_NODE_TEST_POSTGRES_BINDIR"

DRIVER = "postgresql+psycopg"
SUPERUSER = "postgres"
TOOLS = ("initdb", "pg_ctl", "postgres")
START_TIMEOUT_S = 60
START_ATTEMPTS = 3
# On this project's machines a cluster on disk takes ~230 ms per CREATE DATABASE, one in RAM ~12 ms.
RAM_DIR = Path("/dev/shm")

# Durability is worthless for a cluster that is deleted after the run, and costs seconds per test.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be had here; the message says why, fit for a skip reason."""


def postgres_required() -> bool:
    """Whether CI demands the PostgreSQL leg, so that a missing server fails instead of skipping."""
    return os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0")


class PostgresServer:
    """A server on which we may create databases; hands out one fresh database at a time."""

    def __init__(self, admin_url: URL) -> None:
        self.admin_url = admin_url
        # CREATE/DROP DATABASE cannot run inside a transaction block.
        self._admin: Engine = create_engine(
            admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 10}
        )

    def check(self) -> None:
        """Connect once, so that a wrong URL or a dead server shows up before the first test."""
        try:
            with self._admin.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except SQLAlchemyError as exc:
            raise PostgresUnavailable(
                f"cannot connect to {self.admin_url.render_as_string(hide_password=True)}: {exc}"
            ) from exc

    def create_database(self) -> str:
        """Create an empty database with a unique name; return its SQLAlchemy URL, password included."""
        name = f"fhir_node_test_{uuid.uuid4().hex[:16]}"
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        """Drop a database made by ``create_database``, even if a test left connections open."""
        name = make_url(url).database
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextmanager
    def fresh_database(self) -> Iterator[str]:
        """A new empty database for the duration of the ``with`` block."""
        url = self.create_database()
        try:
            yield url
        finally:
            self.drop_database(url)

    def close(self) -> None:
        self._admin.dispose()


@contextmanager
def start_postgres() -> Iterator[PostgresServer]:
    """The configured server, or a throwaway cluster; raises ``PostgresUnavailable`` if neither."""
    configured = os.environ.get(URL_ENV, "").strip()
    with nullcontext(make_url(configured)) if configured else _throwaway_cluster() as url:
        server = PostgresServer(url.set(drivername=DRIVER))
        try:
            server.check()
            yield server
        finally:
            server.close()


def find_bindir() -> Path:
    """The directory of initdb/pg_ctl/postgres: ``$FHIR_NODE_TEST_POSTGRES_BINDIR`` alone if set,
    else the one on PATH, else the newest Debian-style ``/usr/lib/postgresql/<version>/bin``."""
    override = os.environ.get(BINDIR_ENV)
    if override is not None:
        candidates = [Path(override)]
    else:
        on_path = shutil.which("pg_ctl")
        debian = sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
            reverse=True,
        )
        candidates = ([Path(on_path).parent] if on_path else []) + debian
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in TOOLS):
            return bindir
    where = f"{BINDIR_ENV}={override}" if override is not None else "PATH and /usr/lib/postgresql/*/bin"
    raise PostgresUnavailable(
        f"PostgreSQL server binaries ({', '.join(TOOLS)}) not found in {where}. Install Debian's "
        f"'postgresql' package, set {BINDIR_ENV}, or point {URL_ENV} at a server."
    )


@contextmanager
def _throwaway_cluster() -> Iterator[URL]:
    """initdb + pg_ctl start in a temporary directory (in RAM where possible); stopped and deleted on exit."""
    bindir = find_bindir()
    in_ram = RAM_DIR.is_dir() and os.access(RAM_DIR, os.W_OK | os.X_OK)
    workdir = Path(tempfile.mkdtemp(prefix="fhir-node-pg-", dir=RAM_DIR if in_ram else None))
    try:
        owner = _cluster_owner()
        if owner is not None:
            os.chown(workdir, owner.pw_uid, owner.pw_gid)
        datadir = workdir / "data"
        password = secrets.token_hex(16)
        pwfile = workdir / "pwfile"
        pwfile.write_text(password + "\n")
        if owner is not None:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        _run(
            owner,
            workdir,
            [
                str(bindir / "initdb"),
                f"--pgdata={datadir}",
                f"--username={SUPERUSER}",
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
        )
        pwfile.unlink()
        settings = {**SERVER_SETTINGS, "unix_socket_directories": f"'{workdir}'"}
        # Appending keeps the file's owner, so the server (not root) can still read it.
        with (datadir / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        try:
            port = _start(bindir, owner, workdir, datadir)
            yield URL.create(
                DRIVER,
                username=SUPERUSER,
                password=password,
                host="127.0.0.1",
                port=port,
                database="postgres",
            )
        finally:
            # Also after a start that timed out: the server may be up without pg_ctl having seen it.
            if (datadir / "postmaster.pid").exists():
                _run(
                    owner,
                    workdir,
                    [str(bindir / "pg_ctl"), "stop", f"--pgdata={datadir}", "--mode=immediate"],
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _start(bindir: Path, owner: pwd.struct_passwd | None, workdir: Path, datadir: Path) -> int:
    """Start the server on a free loopback port; retry if another process grabs the port first."""
    log = workdir / "server.log"
    for _ in range(START_ATTEMPTS):
        port = _free_port()
        log.unlink(missing_ok=True)
        try:
            _run(
                owner,
                workdir,
                [
                    str(bindir / "pg_ctl"),
                    "start",
                    f"--pgdata={datadir}",
                    f"--log={log}",
                    "--wait",
                    f"--timeout={START_TIMEOUT_S}",
                    f"--options=-p {port}",
                ],
            )
        except PostgresUnavailable as exc:
            if "could not bind" not in _tail(log):
                raise PostgresUnavailable(f"{exc}\nserver log:\n{_tail(log)}") from None
            continue
        return port
    raise PostgresUnavailable(f"could not bind a free port in {START_ATTEMPTS} attempts:\n{_tail(log)}")


def _cluster_owner() -> pwd.struct_passwd | None:
    """initdb and postgres refuse to run as root; then they run as the 'postgres' (or 'nobody') user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and neither a 'postgres' nor a 'nobody' user exists")


def _run(owner: pwd.struct_passwd | None, cwd: Path, args: list[str]) -> None:
    as_owner = {} if owner is None else {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
    result = subprocess.run(
        args,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        # Own session: a Ctrl-C meant for pytest must not also shut the server down under its feet.
        start_new_session=True,
        **as_owner,
    )
    if result.returncode != 0:
        raise PostgresUnavailable(
            f"{' '.join(args)} exited with {result.returncode}:\n{result.stdout}{result.stderr}".rstrip()
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"

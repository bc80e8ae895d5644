"""What the audit costs a search, with the machine's drift cancelled (issue 9): two apps in one process, audit
on and audit off, each on its own copy of one database (EpisodeOfCare, their patients and organisations, as
`search_load.py` loads them), answer the same three searches 4 at a time on one event loop, in alternated
blocks; the report is the CPU each spends per search and their ratio.

    python benchmarks/audit_cost.py --episodes 2000 --searches 6000

On a shared machine a run of `search_load.py` with audit on and one with it off can differ by more than the
audit costs (audit off alone moved 968-1,752 searches/s in one morning); here both see the same machine at
the same moments. The apps run without HTTP (the ASGI app is called directly): the ratio is of the node's
own work, the socket and uvicorn's ~150-250 µs per request left out of both. Each block counts the whole
process's CPU; audit on's ends once its audit writer's thread has chained what it journaled (the thread
works during the block, as in a server, and never during the other app's). The index lag is set past the
run, so no AuditEvent is indexed meanwhile: this measures what the audit costs each request, not sustained
indexing (`search_load.py --searches` past the lag does).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import uvloop
from starlette.applications import Starlette

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from asgi_scope import http_scope
from search_load import database, load_direct, load_population, search_mix

from fhir_node.app import create_app
from fhir_node.settings import Settings
from fhir_node.store.audit_journal import pending
from fhir_node.store.database import Database

BLOCK = 200
CONCURRENT = 4


async def call(app: Starlette, target: str) -> None:
    """One GET through the app, as uvicorn would call it; anything but a 200 stops the run."""
    path, _, query = target.partition("?")
    scope = http_scope("GET", path, query.encode(), ((b"accept", b"application/fhir+json"),))
    answered = asyncio.Event()
    sent_body = False
    statuses = []

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    answered.set()
    if statuses != [200]:
        raise RuntimeError(f"GET {target} answered {statuses}")


async def blocks(apps: dict[str, Starlette], queries: list[str], searches: int) -> dict[str, float]:
    """`searches` searches for each app in alternated blocks (which goes first alternates too); the CPU
    seconds of the whole process during each app's blocks. Audit on's block ends once its writer has chained
    what the block journaled, so its thread's work counts for it and never runs in the other's blocks."""
    cpu = dict.fromkeys(apps, 0.0)
    rounds = searches // BLOCK
    for b in range(rounds):
        order = list(apps) if b % 2 == 0 else list(reversed(apps))
        for name in order:
            t = time.process_time()
            for j in range(0, BLOCK, CONCURRENT):
                k = b * BLOCK + j
                await asyncio.gather(*(call(apps[name], queries[(k + i) % len(queries)]) for i in range(CONCURRENT)))
            db = apps[name].state.node.db
            while _unchained(db):
                await asyncio.sleep(0.02)  # each look costs ~0.1 ms, counted for audit on
            cpu[name] += time.process_time() - t
    return cpu


def _unchained(db: Database) -> bool:
    """Whether the workers' journals (SQLite) hold facts not chained yet."""
    if db.journals is None:
        return False
    with db.read() as conn:
        return pending(conn, db.journals)


def measure(settings: Callable[[bool], Settings], queries: list[str], searches: int) -> dict[str, float]:
    """Warm both apps up, then measure; CPU µs per search of each."""
    apps = {"on": create_app(settings(True)), "off": create_app(settings(False))}

    async def run() -> dict[str, float]:
        async with apps["on"].router.lifespan_context(apps["on"]), apps["off"].router.lifespan_context(apps["off"]):
            await blocks(apps, queries, 4 * BLOCK)  # plans, caches, the page cache
            return await blocks(apps, queries, searches)

    cpu = uvloop.run(run())
    done = searches // BLOCK * BLOCK
    return {
        "audit_off_us_per_search": round(cpu["off"] / done * 1e6, 1),
        "audit_on_us_per_search": round(cpu["on"] / done * 1e6, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=2000)
    ap.add_argument("--searches", type=int, default=6000, help="per app, in blocks of 200")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        with database("sqlite", tmp) as url:
            db = Database(url)
            db.migrate()
            db.dispose()
            patient_ids, org_ids = load_population(partial(load_direct, url), args.episodes, random.Random(42))
            for name in ("on", "off"):  # the database and its chain's file (`store.audit_file`)
                (tmp / name).mkdir()
                for part in tmp.glob("bench.*"):
                    shutil.copy(part, tmp / name / part.name)

            def settings(audit: bool) -> Settings:
                return Settings(
                    database_url=f"sqlite:///{tmp / ('on' if audit else 'off') / 'bench.db'}",
                    audit=audit,
                    enforce_profiles=False,
                    audit_index_lag=10 * args.searches,
                )

            queries = search_mix(patient_ids, org_ids, args.searches)
            found = measure(settings, queries, args.searches)
    report = {
        "episodes": args.episodes,
        "searches_per_app": args.searches // BLOCK * BLOCK,
        **found,
        "on_over_off": round(found["audit_off_us_per_search"] / found["audit_on_us_per_search"], 3),
    }
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()

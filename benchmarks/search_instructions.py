"""Instructions per search (issue 11), a figure a noisy machine does not move: the ASGI app called in process
with the search mix of `search_load.py` (active since 2024, one patient's episodes, one organisation's, in
turn), counted by valgrind's cachegrind over two run lengths, so that start-up and loading cancel out.

    apt-get install valgrind                  # once
    python benchmarks/search_instructions.py --episodes 2000 --searches 300

Time per search moved by 2x from minute to minute on this project's machine (2026-12-02), instructions by a
few per cent: the ids the node gives are random, so each run's comparisons in the id indexes differ (469,000 to
515,000 for one commit in four runs); compare commits over several runs each. The machine's speed, the kernel
and uvicorn's share are not in it (`../shared/perf/compare` has them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

from audit_cost import call
from search_load import database, load_direct, load_population, search_mix

from fhir_node.api import routes
from fhir_node.app import create_app
from fhir_node.settings import Settings
from fhir_node.store.database import Database

#: Searches run before counting starts in either run: plans and statements are built by then.
_WARM = 30


async def _run(url: str, paths: list[str]) -> None:
    """Call the app for each path, one after another (`audit_cost.call`: GET from the loopback address, a 200)."""
    os.environ.update(FHIR_NODE_AUTH="none", FHIR_NODE_AUDIT="false", FHIR_NODE_LOG_LEVEL="WARNING")
    # Under valgrind a search runs ~100x slower: past the loop's budget it would be run again in a thread,
    # the more often the slower the machine. Lifted, each search runs once, on the loop, as it does natively.
    routes.LOOP_BUDGET = 3600.0
    app = create_app(Settings(database_url=url, enforce_profiles=False))
    async with app.router.lifespan_context(app):
        for path in paths:
            await call(app, path)


def _instructions(url: str, paths_file: Path, count: int) -> int:
    """cachegrind's instruction count for start-up and the first `count` searches of `paths_file`."""
    found = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null", sys.executable,
         __file__, "--run", url, str(paths_file), str(count)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    m = re.search(r"I\s+refs:\s+([\d,]+)", found.stderr)
    if m is None:
        raise RuntimeError(f"no instruction count from valgrind: {found.stderr[-500:]}")
    return int(m.group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=2000)
    ap.add_argument("--searches", type=int, default=300)
    ap.add_argument("--run", nargs=3, metavar=("URL", "PATHS", "COUNT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        url, paths_file, count = args.run
        asyncio.run(_run(url, Path(paths_file).read_text().split()[: int(count)]))
        return
    with tempfile.TemporaryDirectory() as tmpdir, database("sqlite", Path(tmpdir)) as url:
        Database(url).migrate()
        patient_ids, org_ids = load_population(partial(load_direct, url), args.episodes, random.Random(42))
        paths_file = Path(tmpdir) / "paths.txt"
        mix = search_mix(patient_ids, org_ids, (_WARM + args.searches) // 3 + 1)
        paths_file.write_text("\n".join(mix))
        short = _instructions(url, paths_file, _WARM)
        long = _instructions(url, paths_file, _WARM + args.searches)
    per_search = (long - short) / args.searches
    print(f"{args.episodes} EpisodeOfCare, {args.searches} searches: {per_search:,.0f} instructions a search")


if __name__ == "__main__":
    main()

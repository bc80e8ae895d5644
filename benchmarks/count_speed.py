"""Count benchmark (issue 11): `_summary=count` and `_total=accurate` of the search mix, served by a real
`fhir-node serve`, against a COUNT over the most selective index for the same criteria run straight on
the same database (the shape of the floor's count queries in `../shared/perf/floor_common.py`).

    python benchmarks/count_speed.py --episodes 100000
    python benchmarks/count_speed.py --episodes 100000 --database postgresql

Prints, per query, the node's median milliseconds (over HTTP, one client), the index COUNT's median, and
their ratio (goal: <= 2).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import orjson
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from live_node import serve_node  # noqa: E402
from search_load import Conn, database, load_direct, load_population  # noqa: E402

from fhir_node.store.database import Database, normalise_url  # noqa: E402

#: The floor's shape: count the rows of the most selective index, probing the other criterion per row.
_BY_STATUS_AND_DATE = """
SELECT count(*) FROM idx_token t
WHERE t.res_type = 'EpisodeOfCare' AND t.param = 'status' AND t.code = 'active'
  AND EXISTS (SELECT 1 FROM idx_date d WHERE d.res_type = t.res_type AND d.res_id = t.res_id
              AND d.param = 'date' AND d.high >= :ge)"""
_BY_REFERENCE = """
SELECT count(*) FROM idx_reference
WHERE res_type = 'EpisodeOfCare' AND param = :param AND target_type = :ttype AND target_id = :tid"""


def median_ms(run: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Median wall milliseconds of `run` over `repeat` calls (after one warm-up), and its last result."""
    result = run()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = run()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--episodes", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmpdir, database(args.database, Path(tmpdir)) as url:
        tmp = Path(tmpdir)
        Database(url).migrate()
        patient_ids, org_ids = load_population(partial(load_direct, url), args.episodes, random.Random(42))
        engine = create_engine(normalise_url(url))
        ge = "2024-01-01 00:00:00"
        cases = [
            ("status=active&date=ge2024-01-01", _BY_STATUS_AND_DATE, {"ge": ge}),
            (
                f"patient=Patient/{patient_ids[0]}",
                _BY_REFERENCE,
                {"param": "patient", "ttype": "Patient", "tid": patient_ids[0]},
            ),
            (
                f"organization=Organization/{org_ids[0]}",
                _BY_REFERENCE,
                {"param": "organization", "ttype": "Organization", "tid": org_ids[0]},
            ),
        ]
        env = {"FHIR_NODE_LOG_LEVEL": "WARNING", "FHIR_NODE_AUDIT": "false"}
        report = []
        with serve_node(url, tmp, env) as base, engine.connect() as raw:
            host, port = "127.0.0.1", int(base.split(":")[2].split("/")[0])
            client = Conn(host, port)
            for query, sql, binds in cases:
                floor_ms, floor_n = median_ms(
                    lambda sql=sql, binds=binds: raw.execute(text(sql), binds).scalar(), args.repeat
                )
                row = {"query": query, "index_count": floor_n, "index_count_ms": round(floor_ms, 2)}
                for shape in ("_summary=count", "_total=accurate&_count=50"):
                    path = f"/fhir/EpisodeOfCare?{query}&{shape}"
                    ms, answer = median_ms(lambda path=path: client.request("GET", path), args.repeat)
                    status, body = answer  # type: ignore[misc]
                    if status != 200:
                        raise RuntimeError(f"{path}: {status} {body[:300]!r}")
                    total = orjson.loads(body)["total"]
                    if total != floor_n:
                        raise RuntimeError(f"{path}: total {total}, the index counts {floor_n}")
                    row[f"{shape.split('&')[0]}_ms"] = round(ms, 2)
                    row[f"{shape.split('&')[0]}_ratio"] = round(ms / floor_ms, 2)
                report.append(row)
        engine.dispose()
        print(
            orjson.dumps(
                {"database": args.database, "episodes": args.episodes, "counts": report}, option=orjson.OPT_INDENT_2
            ).decode()
        )


if __name__ == "__main__":
    main()

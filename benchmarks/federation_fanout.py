"""Fan-out benchmark (issue 14): the same query to N local nodes at once, each a real `fhir-node serve`
(SQLite, FHIR_NODE_AUTH=jwt with tokens from a SMART token server on loopback, audit on unless `--audit off`)
holding its own EpisodeOfCare, optionally one of them behind a proxy that delays every answer. Per query:

- `fanout_ms`: one federated query, start to merged answer (p50, p95), one at a time;
- `slowest_node_ms`: in the same fan-outs, the slowest node's time as the report gives it (p50, p95);
- `sequential_ms`: the same nodes asked one after the other (p50 of the sum);
- `client_cpu_ms_per_fanout`: the central index's own CPU per fan-out (this process: client, token server);
- `fanouts_per_s` / `node_answers_per_s`: with `--concurrency` fan-outs in flight.

    python benchmarks/federation_fanout.py --nodes 10 --episodes 200 --queries 100 [--slow-ms 100] [--audit off]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from federation_servers import FaultProxy, TokenServer, node_databases, serve_asgi, serve_nodes  # noqa: E402
from search_load import pseudonym_key  # noqa: E402

from fhir_node.federation import Auth, Federation, Node  # noqa: E402
from fhir_node.federation.nodes import thumbprint  # noqa: E402

QUERIES = {
    "count": "EpisodeOfCare?status=active&_summary=count",
    "search": "EpisodeOfCare?status=active&_count=50",
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 1)


async def measure(nodes: list[Node], query: str, rounds: int, concurrency: int) -> dict[str, Any]:
    async with Federation(nodes, timeout=60) as federation:
        singles = [Federation([node], timeout=60) for node in nodes]
        for _ in range(5):  # warm-up: tokens, connections
            await federation.search(query)
            for single in singles:
                await single.search(query)
        fanout, slowest, sequential, cpu = [], [], [], []
        for _ in range(rounds):
            start, used = time.perf_counter(), time.process_time()
            answer = await federation.search(query)
            fanout.append((time.perf_counter() - start) * 1000)
            cpu.append((time.process_time() - used) * 1000)
            assert answer.complete, answer.as_json()["nodes"]
            slowest.append(max(n.seconds for n in answer.nodes) * 1000)
        for _ in range(max(5, rounds // 5)):
            start = time.perf_counter()
            for single in singles:
                await single.search(query)
            sequential.append((time.perf_counter() - start) * 1000)
        for single in singles:
            await single.aclose()

        async def loop(n: int) -> None:
            for _ in range(n):
                await federation.search(query)

        start = time.perf_counter()
        await asyncio.gather(*(loop(rounds // concurrency) for _ in range(concurrency)))
        wall = time.perf_counter() - start
        done = (rounds // concurrency) * concurrency
        entries = len(answer.entries) if not answer.is_count else None
    return {
        "fanout_ms": {"p50": percentile(fanout, 0.5), "p95": percentile(fanout, 0.95)},
        "slowest_node_ms": {"p50": percentile(slowest, 0.5), "p95": percentile(slowest, 0.95)},
        "fanout_over_slowest_p50_ms": round(statistics.median(f - s for f, s in zip(fanout, slowest, strict=True)), 1),
        "sequential_ms": {"p50": percentile(sequential, 0.5)},
        "client_cpu_ms_per_fanout": round(statistics.mean(cpu), 1),
        "fanouts_per_s": round(done / wall, 1),
        "node_answers_per_s": round(done * len(nodes) / wall, 1),
        **({"total": answer.total} if answer.is_count else {"entries": entries}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--episodes", type=int, default=200, help="EpisodeOfCare per node (about 70 %% active)")
    ap.add_argument("--queries", type=int, default=100, help="fan-outs measured per query")
    ap.add_argument("--concurrency", type=int, default=4, help="fan-outs in flight for the throughput figure")
    ap.add_argument("--audit", choices=["on", "off"], default="on", help="the nodes' AuditEvent per request")
    ap.add_argument("--slow-ms", type=float, default=0, help="delay every answer of the last node by this much")
    args = ap.parse_args()
    rng = random.Random(14)
    names = [f"node-{i:02d}" for i in range(1, args.nodes + 1)]
    data = {
        name: {f"ep-{i}": rng.choice(["active"] * 7 + ["finished"] * 3) for i in range(args.episodes)} for name in names
    }
    tokens, proxy = TokenServer(), FaultProxy()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tokens.register("central-index", thumbprint(key), key.public_key(), lifetime=3600)
    auth = Auth(client_id="central-index", private_key=key)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        tokens.base = stack.enter_context(serve_asgi(tokens.app()))
        proxy_base = stack.enter_context(serve_asgi(proxy.app()))
        folders = {name: Path(tmp) / name for name in names}
        for folder in folders.values():
            folder.mkdir()
        pseudonym_key(Path(tmp))  # the nodes run with FHIR_NODE_AUTH=jwt: their key is the operator's to give
        os.environ["FHIR_NODE_ENFORCE_PROFILES"] = "false"  # minimal data, as in tests/test_federation.py
        node_databases(folders, data)
        envs = {
            name: {
                **tokens.node_env(name),
                "FHIR_NODE_AUDIT": str(args.audit == "on").lower(),
                "FHIR_NODE_LOG_LEVEL": "WARNING",
            }
            for name in names
        }
        slow = names[-1]
        if args.slow_ms:  # behind the proxy, as behind a gateway: the node's links name the public base
            envs[slow]["FHIR_NODE_BASE_URL"] = f"{proxy_base}/slow"
        bases = stack.enter_context(serve_nodes(folders, envs))
        if args.slow_ms:
            proxy.routes["slow"] = {"target": bases[slow], "delay": args.slow_ms / 1000}
            bases[slow] = f"{proxy_base}/slow"
        nodes = [Node(name=name, url=bases[name], auth=auth) for name in names]
        report = {
            "nodes": args.nodes,
            "episodes_per_node": args.episodes,
            "audit": args.audit,
            "slow_ms": args.slow_ms,
            "concurrency": args.concurrency,
            **{
                name: asyncio.run(measure(nodes, query, args.queries, args.concurrency))
                for name, query in QUERIES.items()
            },
        }
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()

"""`fhir-node federate --nodes nodes.yaml "EpisodeOfCare?status=active&_summary=count"`: exit 0 when every node
answered, 2 when the answer is partial, 1 on a usage error (argparse's own usage errors included, as its usual
2 would read as "partial")."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, NoReturn

from fhir_node.arguments import positive
from fhir_node.federation import federate, report
from fhir_node.federation.fanout import QueryError, parse_query
from fhir_node.federation.nodes import NodesFileError, load_nodes

USAGE_ERROR = 1
PARTIAL = 2
DESCRIPTION = "ask every node in a nodes file the same FHIR search, concurrently, and merge the answers"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="fhir-node federate",
        description=DESCRIPTION,
        epilog="exit status: 0 every node answered, 2 a partial answer (see the report), 1 a usage error",
    )
    p.add_argument(
        "query", help="a search relative to each node's base, e.g. 'EpisodeOfCare?status=active&_summary=count'"
    )
    p.add_argument("--nodes", required=True, metavar="FILE", help="YAML nodes file: nodes: [{name, url, auth?}]")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output (default %(default)s)")
    p.add_argument("--max", type=positive(int), metavar="N", help="per node, stop following pages after N entries")
    p.add_argument(
        "--timeout",
        type=positive(float),
        default=30.0,
        metavar="S",
        help="seconds for each node's whole answer, unless its entry sets one (default %(default)s)",
    )
    p.add_argument(
        "--retries",
        type=int,
        choices=range(11),
        default=3,
        metavar="N",
        help="further tries after 429, 503 or a failed connection, 0-10 (default %(default)s)",
    )
    p.add_argument(
        "--suppress-below",
        type=positive(int),
        default=5,
        metavar="N",
        help="withhold a summed count below N, 0 included (small-cell suppression; default %(default)s)",
    )
    return p


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        nodes = load_nodes(args.nodes)
        parse_query(args.query)
    except (NodesFileError, QueryError) as exc:
        p.error(str(exc))
    answer = asyncio.run(
        federate(
            nodes, args.query, args.max, timeout=args.timeout, retries=args.retries, suppress_below=args.suppress_below
        )
    )
    print(report.as_json(answer) if args.format == "json" else report.as_table(answer, args.suppress_below))
    return 0 if answer.complete else PARTIAL


def add_parser(sub: Any) -> None:
    """Lists `federate` in `fhir-node --help`; `fhir_node.cli` hands its arguments to `main` (own usage errors)."""
    sub.add_parser("federate", help=DESCRIPTION, add_help=False)

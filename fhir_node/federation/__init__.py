"""Federated queries from the central index's side: the same FHIR search sent to many nodes at once, each with
its own SMART backend-services token, timeout and retries, and the answers merged (`fhir-node federate`)."""

from typing import Any

from fhir_node.federation.fanout import Answer, Federation, NodeReport, QueryError
from fhir_node.federation.nodes import Auth, Node, NodesFileError, load_nodes

__all__ = [
    "Answer",
    "Auth",
    "Federation",
    "Node",
    "NodeReport",
    "NodesFileError",
    "QueryError",
    "federate",
    "load_nodes",
]


async def federate(nodes: list[Node], query: str, max_entries: int | None = None, **options: Any) -> Answer:
    """One query, then the connections closed: `await federate(load_nodes("nodes.yaml"), "Patient?_summary=count")`.
    `options`: Federation's timeout, retries, suppress_below."""
    async with Federation(nodes, **options) as federation:
        return await federation.search(query, max_entries)

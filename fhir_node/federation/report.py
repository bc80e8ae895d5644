"""The merged answer for people (a table) and for programs (one JSON object)."""

from __future__ import annotations

import orjson

from fhir_node.federation.fanout import Answer


def as_json(answer: Answer) -> str:
    """`{"nodes": [{name, ok, status, error, seconds}], "total": n | null}` or `{"nodes": [...], "entries": [...]}`."""
    return orjson.dumps(answer.as_json(), option=orjson.OPT_INDENT_2).decode()


def as_table(answer: Answer, suppress_below: int) -> str:
    """Per node: answered or failed, HTTP status, seconds, why; then the total, or the entries by node."""
    rows = [("node", "answer", "status", "seconds", "error")]
    rows += [
        (
            n.name,
            "ok" if n.ok else "FAILED",
            "-" if n.status is None else str(n.status),
            f"{n.seconds:.3f}",
            n.error or "",
        )
        for n in answer.nodes
    ]
    lines = _table(rows)
    answered = sum(n.ok for n in answer.nodes)
    lines.append("")
    if answer.is_count:
        if answer.suppressed:
            lines.append(f"total: suppressed (a small cell: below {suppress_below}, or withheld by a node)")
        else:
            lines.append(f"total: {answer.total}")
    else:
        lines.append(f"entries: {len(answer.entries)}")
        if answer.entries:
            lines += _table(
                [
                    ("node", "fullUrl"),
                    *((name, entry.get("fullUrl", "(about the search)")) for name, entry in answer.entries),
                ]
            )
    partial = "" if answer.complete else ": a PARTIAL answer"
    lines.append(f"{answered} of {len(answer.nodes)} nodes answered{partial}")
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]

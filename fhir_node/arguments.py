"""Argument types shared by the `fhir-node` commands."""

from __future__ import annotations

from typing import Any


def positive(kind: type[int] | type[float]) -> Any:
    """An argparse `type` accepting only values above zero (a count of 0 or less means nothing useful)."""

    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise ValueError(text)
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse

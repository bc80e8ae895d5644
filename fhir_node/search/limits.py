"""Bounds on the work one search may ask for. The cost of a search grows with its repeats, OR lists,
chains and `_has` nesting (on PostgreSQL 250 repeats of one parameter ran for minutes), so each is capped
by a setting and refused with a 400 naming the parameter before any SQL is built."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from fhir_node.outcome import fail
from fhir_node.search.parse import RESULT_PARAMETERS, split_values
from fhir_node.settings import Settings

#: Result parameters that add work per value (each one an include query).
_INCLUDES = ("_include", "_revinclude")


@dataclass(frozen=True)
class Limits:
    """The caps of FHIR_NODE_SEARCH_MAX_*."""

    repeats: int
    values: int
    criteria: int
    chain_depth: int
    has_depth: int
    iterate: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            settings.search_max_repeats,
            settings.search_max_values,
            settings.search_max_criteria,
            settings.search_max_chain_depth,
            settings.search_max_has_depth,
            settings.search_max_iterate,
        )

    def check(self, params: list[tuple[str, str]]) -> None:
        """A 400 `too-costly` for the first bound `params` exceed. It runs before every search, so what
        cannot exceed a bound is not counted: no name repeats more often than there are parameters, and
        no value lists more values than its commas allow."""
        criteria: list[tuple[str, str]] = []
        includes: list[tuple[str, str]] = []
        for name, raw in params:
            base = name.partition(":")[0]
            if base not in RESULT_PARAMETERS:
                criteria.append((name, raw))
            elif base in _INCLUDES:
                includes.append((name, raw))
        counted = criteria + includes
        if len(counted) > self.criteria:
            raise _too_costly(f"The search has {len(counted)} criteria; this node takes at most {self.criteria}")
        if len(params) > self.repeats:
            for name, times in Counter(name for name, _ in params).items():
                if times > self.repeats:
                    raise _too_costly(f"'{name}' is repeated {times} times; at most {self.repeats} are allowed", name)
        for name, raw in counted:
            if name.count("_has:") > self.has_depth:
                raise _too_costly(f"'{name}' nests _has deeper than {self.has_depth}", name)
            if name.count(".") > self.chain_depth:
                raise _too_costly(f"'{name}' chains more than {self.chain_depth} references", name)
            if raw.count(",") >= self.values and (values := len(split_values(raw))) > self.values:
                raise _too_costly(f"'{name}' lists {values} values; at most {self.values} are allowed", name)

    def iterated_too_deep(self, rounds: int) -> Exception:
        """What an `:iterate` include that still finds resources after `rounds` rounds answers."""
        return _too_costly(
            f"_include:iterate / _revinclude:iterate still finds resources after {rounds} rounds; "
            f"this node follows at most {self.iterate}",
            "_include:iterate",
        )


def _too_costly(text: str, *expression: str) -> Exception:
    return fail(400, "too-costly", text, *expression)

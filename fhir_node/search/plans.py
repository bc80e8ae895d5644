"""Ready statements per query shape. For one shape (the type, the caller's reach on it, each criterion's
name and the forms of its values: a `Type/id` reference, a `system|code` token, a date with prefix `ge`...)
the SQL of a search never changes, only the values bound to it; a search of a shape seen before binds its
values to the statement built the first time, instead of building it again (~40% of a small search's
time) and having SQLAlchemy walk it for its cache key (the statement object keeps the key it computed
once).

Only how the SQL is built is cached, per process and bounded, never what it returns. A shape has no
plan when the SQL would depend on more than the values: an access condition that depends on the caller
(own patients, relationships, project; `policy.shared` names the reaches whose condition every caller
with them shares: none for the operator, the research-consent probe for the aggregator), chains, `_has`,
`:missing`, `:not`, number and quantity values; those searches build their SQL per request as before."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from threading import Lock
from typing import Any

from fhir_node.search.parse import Parsed
from fhir_node.search.sql import contextual, forms
from fhir_node.store.ready import Ready

#: Shapes kept per process: an aggregator's few searches, their paging directions, with room to spare.
CAPACITY = 512


@dataclass(frozen=True)
class Shape:
    """A search's shape (`key`) and its values under their bind parameters' names."""

    key: tuple[Hashable, ...]
    binds: dict[str, Any]


def shape(res_type: str, parsed: Parsed, base: str, reach: str) -> Shape | None:
    """The shape of a one-type search's criteria for callers with `reach` on the type (one whose access
    condition every such caller shares: `policy.shared`), or None when a plan cannot hold them. Kept on
    `parsed` (which a query repeated shares, see `search._parsed`) unless a value's form depends on the
    caller or the time (`sql.contextual`)."""
    kept = parsed.shapes.get((base, reach))
    if kept is not None:
        return kept
    parts: list[Hashable] = [res_type, reach]
    binds: dict[str, Any] = {}
    keep = True
    for i, c in enumerate(parsed.criteria):
        found = forms(c, f"c{i}", base)
        if found is None:
            return None
        keep = keep and not contextual(found[0])
        parts.append((c.name, c.target_types, found[0]))
        binds.update(found[1])
    made = Shape(tuple(parts), binds)
    if keep:
        parsed.shapes[base, reach] = made
    return made


def bound(parsed: Parsed) -> Parsed:
    """A copy of `parsed` whose criteria build SQL with bind parameters (named as `shape` names them)."""
    return Parsed(criteria=[replace(c, bound=f"c{i}") for i, c in enumerate(parsed.criteria)], lenient=parsed.lenient)


class _Statements:
    """At most `CAPACITY` statements by key, the least recently used dropped first; shared by the threads
    that serve searches."""

    def __init__(self) -> None:
        self._statements: OrderedDict[Hashable, Ready] = OrderedDict()
        self._lock = Lock()
        #: Statements built so far (a shape seen again builds none).
        self.built = 0

    def get(self, key: Hashable, build: Callable[[], Ready]) -> Ready:
        with self._lock:
            found = self._statements.get(key)
            if found is not None:
                self._statements.move_to_end(key)
                return found
        built = build()
        with self._lock:
            self.built += 1
            self._statements[key] = built
            if len(self._statements) > CAPACITY:
                self._statements.popitem(last=False)
        return built


_READY = _Statements()
ready = _READY.get


def built() -> int:
    """How many statements this process has built: what shows that a shape seen again is not rebuilt."""
    return _READY.built

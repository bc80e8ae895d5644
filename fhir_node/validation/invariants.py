"""Constraint (invariant) evaluation: each FHIRPath expression compiled once, evaluated per element.

fhirpathpy lacks a few functions the R4 invariants use; `hasValue()` is added here, `resolve()` comes
from the search engine and `htmlChecks()` (txt-1, txt-2) from narrative.py. An expression fhirpathpy
cannot evaluate (`conformsTo()`...) is reported once in the log and skipped: it never turns into a
false error.

`ele-1` sits on every element of every definition, and the engine would dominate validation time with
it, so that one expression is answered natively (same meaning: a value, or some child other than id).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import fhirpathpy
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

from fhir_node.search.fhirpath import resolve_literal
from fhir_node.validation.narrative import narrative_problems

log = logging.getLogger(__name__)

_MODEL = models["r4"]
CHOICE_TYPES: dict[str, list[str]] = _MODEL["choiceTypePaths"]


def _has_value(inputs: list[Any]) -> list[bool]:
    """FHIRPath hasValue(): a single primitive that carries a value (not only extensions)."""
    if len(inputs) != 1:
        return [False]
    data = inputs[0].data if isinstance(inputs[0], ResourceNode) else inputs[0]
    return [data is not None and not isinstance(data, dict | list)]


def _quiet(label: str, values: list[Any]) -> None:
    """trace() in invariants (dom-3, ref-1) is debugging output: keep it off stdout."""


_OPTIONS = {
    "traceFn": _quiet,
    "userInvocationTable": {
        "resolve": {"fn": resolve_literal, "arity": {0: []}},
        "hasValue": {"fn": _has_value, "arity": {0: []}},
    },
}


def _value_or_children(value: Any, twin: dict[str, Any] | None) -> bool:
    """ele-1 natively: `hasValue() or (children().count() > id.count())`."""
    if isinstance(value, dict):
        return any(k != "id" for k in value)
    return value is not None or any(k != "id" for k in twin or {})


def _safe_narrative(value: Any, twin: dict[str, Any] | None) -> bool:
    """txt-1 and txt-2 (`htmlChecks()`, which fhirpathpy lacks): the narrative rules of narrative.py."""
    return not isinstance(value, str) or not narrative_problems(value)


_NATIVE: dict[str, Callable[[Any, dict[str, Any] | None], bool]] = {
    "hasValue() or (children().count() > id.count())": _value_or_children,
    "htmlChecks()": _safe_narrative,
}


class Invariants:
    """Compiled constraints by expression text; `holds()` answers True when the constraint is met or
    cannot be evaluated here."""

    def __init__(self) -> None:
        self._compiled: dict[str, Callable[..., list[Any]] | None] = {}

    def _compile(self, expression: str) -> Callable[..., list[Any]] | None:
        if expression not in self._compiled:
            try:
                self._compiled[expression] = fhirpathpy.compile(expression, _MODEL, _OPTIONS)
            except Exception as exc:  # fhirpathpy raises bare Exceptions on syntax it lacks
                log.warning("constraint %r cannot be compiled, skipped: %s", expression, exc)
                self._compiled[expression] = None
        return self._compiled[expression]

    def holds(
        self,
        expression: str,
        value: Any,
        twin: dict[str, Any] | None,
        type_path: str,
        resource: dict[str, Any],
        root: dict[str, Any],
    ) -> bool:
        """Evaluate on one element (`type_path`: its type, or its path for a backbone element)."""
        native = _NATIVE.get(expression)
        if native is not None:
            return native(value, twin)
        compiled = self._compile(expression)
        if compiled is None:
            return True
        node = ResourceNode.create_node(value, type_path, twin)
        variables = {"resource": ResourceNode.create_node(resource), "rootResource": ResourceNode.create_node(root)}
        try:
            result = compiled(node, variables)
        except Exception as exc:  # fhirpathpy raises bare Exceptions; unknown functions only surface here
            if "Not implemented" in str(exc):
                log.warning("constraint %r uses what fhirpathpy lacks, skipped from now on: %s", expression, exc)
                self._compiled[expression] = None
            return True
        return False not in result

"""Constraint (invariant) evaluation: each FHIRPath expression compiled once, evaluated per element.

fhirpathpy lacks a few functions the R4 invariants use; `hasValue()` is added here, `resolve()` comes
from the search engine and `htmlChecks()` (txt-1, txt-2) from narrative.py. An expression fhirpathpy
cannot evaluate (`conformsTo()`...) is reported once in the log and skipped: it never turns into a
false error.

The expressions evaluated on nearly everything a load writes (`ele-1` on every element, `ref-1`, `dom-*`,
our check-digit invariants...) are answered natively first (native_invariants.py); fhirpathpy takes
the shapes those leave to it, and every other expression.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import fhirpathpy
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

from fhir_node.search.fhirpath import resolve_literal
from fhir_node.validation.native_invariants import NATIVE, Native

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


class Invariants:
    """Compiled constraints by expression text; `holds()` answers True when the constraint is met or
    cannot be evaluated here."""

    def __init__(self, natives: dict[str, Native] = NATIVE) -> None:
        """`natives`: the expressions answered in Python first (none: fhirpathpy alone, as tests compare)."""
        self._natives = natives
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
        native = self._natives.get(expression)
        answer = native(value, twin, root) if native is not None else None
        if answer is not None:
            return answer
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

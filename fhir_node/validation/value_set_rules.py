"""Rules on ValueSet definitions that HL7's validator applies beyond the invariants: SNOMED CT concept
identifiers in `compose` (snomed.py), and parameterised value sets.

Parameterised value sets (HL7 FHIR Tools IG, "Parameterised ValueSets"): a ValueSet declares its parameters
with the `valueset-parameter` extension, and a filter takes its value from a `cqf-expression` extension
on `_value` holding a FHIRPath expression over those parameters (`%p-inactive`). The expression must be
FHIRPath (`text/fhirpath`), must parse, and may name only declared parameters or the variables FHIR
defines (FHIRPath: an undefined environment variable is an error).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import fhirpathpy
from fhirpathpy.models import models

from fhir_node.outcome import Issue, error
from fhir_node.validation.snomed import SNOMED, concept_id_problem

PARAMETER = "http://hl7.org/fhir/tools/StructureDefinition/valueset-parameter"
EXPRESSION = "http://hl7.org/fhir/StructureDefinition/cqf-expression"
#: Filters whose value is one concept (or, for `in`/`not-in`, a comma-separated list of them).
_CONCEPT_OPS = frozenset({"=", "is-a", "descendent-of", "is-not-a", "generalizes", "in", "not-in"})
#: Environment variables FHIRPath and FHIR define (fhirpath.html#vars); `vs-`, `ext-` name a value set or
#: an extension.
_DEFINED = frozenset({"context", "resource", "rootResource", "ucum", "sct", "loinc", "us-zip"})
_VARIABLE = re.compile(r"'(?:[^'\\]|\\.)*'|%(`[^`]*`|'[^']*'|[A-Za-z_][A-Za-z0-9_\-]*)")


def value_set_rules(value_set: dict[str, Any], where: str) -> Iterator[Issue]:
    compose = value_set.get("compose")
    if not isinstance(compose, dict):
        return
    parameters = _parameters(value_set)
    for part in ("include", "exclude"):
        for i, item in enumerate(compose.get(part, ())):
            if isinstance(item, dict):
                at = f"{where}.compose.{part}[{i}]"
                if item.get("system") == SNOMED:
                    yield from _snomed(item, at)
                if parameters is not None:
                    yield from _parameterised(item, parameters, at)


def _snomed(item: dict[str, Any], at: str) -> Iterator[Issue]:
    """Listed concepts and `concept` filters must name SNOMED CT concepts. A code that is not all digits
    (a post-coordinated expression) is not judged."""
    for j, concept in enumerate(item.get("concept", ())):
        code = concept.get("code") if isinstance(concept, dict) else None
        if isinstance(code, str) and code.isdigit() and (problem := concept_id_problem(code)):
            yield error("code-invalid", problem, f"{at}.concept[{j}].code")
    for j, rule in enumerate(item.get("filter", ())):
        if isinstance(rule, dict) and rule.get("property") == "concept" and rule.get("op") in _CONCEPT_OPS:
            value = rule.get("value")
            values = value.split(",") if rule["op"] in ("in", "not-in") and isinstance(value, str) else [value]
            for one in values:
                if isinstance(one, str) and (problem := concept_id_problem(one.split("|")[0].strip())):
                    yield error("code-invalid", f"Filter on property 'concept': {problem}", f"{at}.filter[{j}].value")


def _parameters(value_set: dict[str, Any]) -> set[str] | None:
    """The parameter names a ValueSet declares, or None when it is not parameterised."""
    declared = [e for e in value_set.get("extension", ()) if isinstance(e, dict) and e.get("url") == PARAMETER]
    if not declared:
        return None
    return {
        part["valueCode"]
        for e in declared
        for part in e.get("extension", ())
        if isinstance(part, dict) and part.get("url") == "name" and isinstance(part.get("valueCode"), str)
    }


def _parameterised(item: dict[str, Any], parameters: set[str], at: str) -> Iterator[Issue]:
    for j, rule in enumerate(item.get("filter", ())):
        twin = rule.get("_value") if isinstance(rule, dict) else None
        for k, extension in enumerate(twin.get("extension", ()) if isinstance(twin, dict) else ()):
            if not isinstance(extension, dict) or extension.get("url") != EXPRESSION:
                continue
            expression = extension.get("valueExpression")
            if isinstance(expression, dict):
                where = f"{at}.filter[{j}]._value.extension[{k}].valueExpression"
                yield from _expression(expression, parameters, where)


def _expression(expression: dict[str, Any], parameters: set[str], where: str) -> Iterator[Issue]:
    language, text = expression.get("language"), expression.get("expression")
    if language != "text/fhirpath":
        yield error(
            "invalid", f"A value set filter expression must be 'text/fhirpath', not '{language}'", f"{where}.language"
        )
        return
    if not isinstance(text, str):
        return
    problem = fhirpath_problem(text)
    if problem:
        yield error("invalid", f"'{text}' is not a valid FHIRPath expression: {problem}", f"{where}.expression")
        return
    for match in _VARIABLE.finditer(text):
        name = (match.group(1) or "").strip("`'")
        if name and name not in parameters and name not in _DEFINED and not name.startswith(("vs-", "ext-")):
            yield error(
                "invalid", f"The expression '{text}' refers to the unknown parameter '{name}'", f"{where}.expression"
            )


def fhirpath_problem(text: str) -> str | None:
    """Why `text` does not parse as FHIRPath, or None when it does."""
    try:
        fhirpathpy.compile(text, models["r4"])
    except Exception as exc:  # fhirpathpy's parser raises antlr's own error types, and ValueError
        return f"{type(exc).__name__}: {exc}"
    return None

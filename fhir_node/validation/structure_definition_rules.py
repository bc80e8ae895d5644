"""Rules on submitted StructureDefinitions that HL7's validator applies, whose breach makes a snapshot
impossible to generate (HL7's validator reports "Error generating snapshot"):

- sdf-20 (an R4 invariant of StructureDefinition.snapshot and .differential, `element.where(path.contains('.')
  .not()).slicing.empty()`): no slicing on the root element. It is answered here natively because the node
  does not hold StructureDefinition's own definition, whose invariants the core pass would evaluate;
- a constraint's differential may only name elements of the type it constrains (profiling.html: a profile
  constrains existing elements and cannot add any): every path must resolve in the R4 type, a choice
  element by its `[x]` name or one of its typed names (`valueQuantity`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fhir_node.outcome import Issue, error
from fhir_node.validation.structure import element_children


def structure_definition_rules(definition: dict[str, Any], where: str) -> Iterator[Issue]:
    for view in ("snapshot", "differential"):
        elements = definition.get(view, {}).get("element", []) if isinstance(definition.get(view), dict) else []
        for i, element in enumerate(elements):
            path = element.get("path") if isinstance(element, dict) else None
            if isinstance(path, str) and "." not in path and "slicing" in element:
                yield error("invariant", "sdf-20: No slicing on the root element", f"{where}.{view}.element[{i}]")
            if (
                view == "differential"
                and isinstance(path, str)
                and definition.get("derivation") == "constraint"
                and definition.get("kind") != "logical"
                and (problem := _path_problem(path, definition.get("type")))
            ):
                yield error("invalid", problem, f"{where}.differential.element[{i}].path")


def _path_problem(path: str, type_name: Any) -> str | None:
    """Why a differential path names no element of `type_name`, or None when it does (or cannot be told:
    below a primitive or a choice of several types)."""
    steps = path.split(".")
    if not isinstance(type_name, str) or not element_children(type_name):
        return None
    if steps[0] != type_name:
        return f"The path '{path}' must start with {type_name}"
    current = type_name
    for depth, step in enumerate(steps[1:], 1):
        children = element_children(current)
        if not children:
            return None  # a primitive's children (id, extension, value) are not in the schema
        if step.endswith("[x]"):
            variants = {t for name, t in (children[p] for p in children if not p.startswith("_")) if name == step[:-3]}
            if not variants:
                return f"The path '{path}' names no element of {type_name} ('{'.'.join(steps[: depth + 1])}')"
            if len(variants) > 1:
                return None  # below a choice of types: which one is not told by the path
            current = next(iter(variants)) or ""
        elif step in children and not step.startswith("_"):
            current = children[step][1] or ""
        else:
            return f"The path '{path}' names no element of {type_name} ('{'.'.join(steps[: depth + 1])}')"
    return None

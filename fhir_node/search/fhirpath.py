"""FHIRPath evaluation for index extraction: expressions compiled once, a fast path for plain paths, and
`resolve()` for literal references (fhirpathpy has none)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import fhirpathpy
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

Evaluator = Callable[[dict[str, Any]], list[Any]]

_PLAIN = re.compile(r"[A-Z][A-Za-z]*(\.[a-z][A-Za-z]*)+")
_LITERAL_REF = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def resolve_literal(inputs: list[Any]) -> list[Any]:
    """resolve() for literal references: a stub of the target (type and id), enough for `is Patient`."""
    out = []
    for ref in inputs:
        m = _LITERAL_REF.search(ref.get("reference", "")) if isinstance(ref, dict) else None
        if m:
            out.append(ResourceNode.create_node({"resourceType": m.group(1), "id": m.group(2)}))
    return out


_OPTIONS = {"userInvocationTable": {"resolve": {"fn": resolve_literal, "arity": {0: []}}}}
_MODEL = models["r4"]


Steps = list[tuple[str, ...]]


def _walk(steps: Steps) -> Evaluator:
    """`Type.a.b`: follow the keys (each step's JSON names: several for a choice element), flattening
    arrays, as FHIRPath would, without the engine's cost."""

    def evaluate(resource: dict[str, Any]) -> list[Any]:
        items: list[Any] = [resource]
        for keys in steps:
            items = _step(items, keys)
        return items

    return evaluate


def _step(items: list[Any], keys: tuple[str, ...]) -> list[Any]:
    nxt: list[Any] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        for key in keys:
            value = item.get(key)
            if isinstance(value, list):
                nxt.extend(value)
            elif value is not None:
                nxt.append(value)
    return nxt


def _steps(expression: str) -> Steps | None:
    """The JSON names of each step of a plain path, or None. A choice element (`Consent.source` is
    `sourceAttachment` or `sourceReference` in JSON), which only the model tells, may only come last."""
    found = _follow(expression)
    return found[0] if found is not None else None


def _follow(expression: str) -> tuple[Steps, str | None] | None:
    """A plain path's steps (see `_steps`) and the type of the element it ends at (None for a choice
    element, or one the model does not name), or None."""
    if not _PLAIN.fullmatch(expression):
        return None
    owner, *names = expression.split(".")
    steps: Steps = []
    kind = None
    for i, name in enumerate(names):
        path = f"{owner}.{name}"
        choices = _MODEL["choiceTypePaths"].get(path)
        if choices is not None:
            if i != len(names) - 1:
                return None
            steps.append(tuple(name + t[0].upper() + t[1:] for t in choices))
            return steps, None
        steps.append((name,))
        kind = _MODEL["path2Type"].get(path)
        owner = kind or _MODEL["pathsDefinedElsewhere"].get(path, path)
    return steps, kind


def primitive(expression: str) -> bool:
    """Whether each part of `expression` is a plain path to a primitive element (a code, a boolean, a
    string...): its token rows are then one per value, never two for the same code."""
    for part in expression.split(" | "):
        found = _follow(part.strip())
        kind = found[1] if found is not None else None
        if kind is None or not (kind[:1].islower() or kind.startswith("System.")):
            return False
    return True


_RESOLVED = re.compile(r"(.+)\.where\(resolve\(\) is ([A-Z][A-Za-z]+)\)")
_WHERE = re.compile(r"(.+)\.where\(([a-z][A-Za-z]*) ?= ?'([^'\\]*)'\)")
_AS = re.compile(r"\((.+) as ([A-Za-z]+)\)")
_REPEAT = re.compile(r"([A-Z][A-Za-z]*(?:\.[a-z][A-Za-z]*)*)\.repeat\(([a-z][A-Za-z]*)\)((?:\.[a-z][A-Za-z]*)*)")
_EXISTS_NOT_FALSE = re.compile(r"(.+)\.exists\(\) and \1 != false")


def _of_type(steps: Steps, target: str) -> Evaluator:
    """`Type.a.b.where(resolve() is T)`: the references along the path whose literal target is a T, which
    is all that `resolve_literal` can tell the engine, without the engine's cost (~1 ms for 20 refs)."""
    walk = _walk(steps)

    def evaluate(resource: dict[str, Any]) -> list[Any]:
        out = []
        for ref in walk(resource):
            m = _LITERAL_REF.search(ref.get("reference", "")) if isinstance(ref, dict) else None
            if m and m.group(1) == target:
                out.append(ref)
        return out

    return evaluate


def _where_equal(steps: Steps, key: str, wanted: str) -> Evaluator:
    """`Type.a.where(k = 'v')`: the elements whose `k` is the string `v` (`telecom.where(system='email')`)."""
    walk = _walk(steps)
    return lambda resource: [e for e in walk(resource) if isinstance(e, dict) and e.get(key) == wanted]


def _as(expression: str, type_name: str) -> Evaluator | None:
    """`(Type.a.b as t)`, `b` a choice element: its value of type `t` only (`deceasedDateTime`)."""
    steps = _steps(expression)
    if steps is None or len(steps[-1]) < 2:
        return None
    named = type_name[0].upper() + type_name[1:]
    keys = [k for k in steps[-1] if k.endswith(named)]
    return _walk([*steps[:-1], (keys[0],)]) if len(keys) == 1 else None


def _repeat(base: Steps, step: str, rest: Steps) -> Evaluator:
    """`Type.a.repeat(b).c`: `b` followed again and again from `a` (not `a` itself), level by level as the
    engine gives them, then `c` from each."""
    walk, follow = _walk(base), (step,)

    def evaluate(resource: dict[str, Any]) -> list[Any]:
        found: list[Any] = []
        level = _step(walk(resource), follow)
        while level:
            found += level
            level = _step(level, follow)
        for keys in rest:
            found = _step(found, keys)
        return found

    return evaluate


def _exists_not_false(steps: Steps, expression: str) -> Evaluator:
    """`X.exists() and X != false` on an element of at most one value (`Patient.deceased`): whether it is
    there and not the boolean false."""
    walk, engine = _walk(steps), _engine(expression)

    def evaluate(resource: dict[str, Any]) -> list[Any]:
        values = walk(resource)
        if len(values) > 1:  # several values to compare: the engine's answer
            return engine(resource)
        return [bool(values) and values[0] is not False]

    return evaluate


_EXTENSION = re.compile(r"([A-Z][A-Za-z]*(?:\.[a-z][A-Za-z]*)*)\.extension\('([^']+)'\)(\.value)?")


def _extensions(expression: str) -> Evaluator | None:
    """`Type.a.extension('url')` and `Type.a.extension('url').value` (our search parameters on extensions)
    without the engine's cost, when each value is an object (a Period, a Reference...); other shapes (a
    primitive value, a `_value` twin) are left to the engine, which knows their FHIRPath types."""
    found = _EXTENSION.fullmatch(expression)
    steps = _steps(found.group(1) + ".extension") if found is not None else None
    if found is None or steps is None:
        return None
    walk, url, value = _walk(steps), found.group(2), found.group(3)
    engine = _engine(expression)

    def evaluate(resource: dict[str, Any]) -> list[Any]:
        named = [e for e in walk(resource) if isinstance(e, dict) and e.get("url") == url]
        if not value:
            return named
        out = []
        for extension in named:
            given = [k for k in extension if k.startswith(("value", "_value"))]
            if len(given) != 1 or not given[0].startswith("value") or not isinstance(extension[given[0]], dict):
                return engine(resource)
            out.append(extension[given[0]])
        return out

    return evaluate


def _part(expression: str) -> Evaluator | None:
    """A fast evaluator for one part of a union, or None."""
    resolved = _RESOLVED.fullmatch(expression)
    if resolved and (steps := _steps(resolved.group(1))) is not None:
        return _of_type(steps, resolved.group(2))
    where = _WHERE.fullmatch(expression)
    if where and (steps := _steps(where.group(1))) is not None:
        return _where_equal(steps, where.group(2), where.group(3))
    cast = _AS.fullmatch(expression)
    if cast:
        return _as(cast.group(1), cast.group(2))
    repeat = _REPEAT.fullmatch(expression)
    if repeat:  # the steps after `repeat(b)` are those after `.b` (the elements it reaches are b's)
        base, whole = _steps(repeat.group(1)), _steps(repeat.group(1) + "." + repeat.group(2) + repeat.group(3))
        if base is None or whole is None:
            return None
        return _repeat(base, repeat.group(2), whole[len(base) + 1 :])
    steps = _steps(expression)
    return _walk(steps) if steps is not None else None


def _fast(expression: str) -> Evaluator | None:
    """A fast evaluator for a plain path (a choice element last), a path filtered by `where(resolve() is T)`
    or by a string-valued element, a choice element `as` one type, `repeat` of one element, an extension
    (or its value) by URL, whether an element is there and not false, or a union of those."""
    extensions = _extensions(expression)
    if extensions is not None:
        return extensions
    present = _EXISTS_NOT_FALSE.fullmatch(expression)
    if present and (steps := _steps(present.group(1))) is not None:
        return _exists_not_false(steps, expression)
    evaluators = [_part(p.strip()) for p in expression.split(" | ")]
    if any(e is None for e in evaluators):
        return None
    found = [e for e in evaluators if e is not None]
    if len(found) == 1:
        return found[0]
    return lambda resource: [v for evaluate in found for v in evaluate(resource)]


def _engine(expression: str) -> Evaluator:
    compiled = fhirpathpy.compile(expression, _MODEL, _OPTIONS)
    return lambda resource: compiled(resource, None)


def compile_expression(expression: str) -> Evaluator:
    """An evaluator for `expression` on a resource; plain dotted paths (and their literal-reference type
    filters) skip the FHIRPath engine."""
    return _fast(expression) or _engine(expression)

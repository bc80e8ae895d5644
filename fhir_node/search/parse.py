"""Parsing search parameters (R4 3.1.1): name[:modifier][.chain]=value[,value], prefixes, escapes, _has.
Everything the node cannot honour is an error naming the parameter, unless the caller asked for lenient
handling, in which case it is reported back as ignored."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fhir_node.outcome import Issue, error
from fhir_node.registry import KINDS
from fhir_node.search.registry import MODIFIERS, Registry, SearchParam

#: Parameters that shape the result rather than filter it.
RESULT_PARAMETERS = frozenset(
    {
        "_sort",
        "_count",
        "_total",
        "_summary",
        "_elements",
        "_include",
        "_revinclude",
        "_contained",
        "_containedType",
        "_cursor",
        "_type",
        "_totalMethod",  # a vendor parameter: see VENDOR_TOTALS
    }
)
#: Result-shaping parameters of popular clients' vendors that the node understands: each shapes the answer
#: like the standard parameter it maps to, and narrows nothing. (Aidbox's `_totalMethod`, which fhirpy's
#: `.count()` sends, is `_total` under another name: count -> accurate.)
VENDOR_TOTALS = {"count": "accurate", "estimate": "estimate", "none": "none"}
#: `_include:iterate` and the like: result parameters too, kept under their full name.
INCLUDE_MODIFIERS = ("iterate", "recurse")
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_ESCAPED_SPLIT = re.compile(r"(?<!\\),")


@dataclass
class Criterion:
    """One filter: `param` (on `res_type`), an optional modifier, OR'd values. `chain` continues a
    reference, one criterion per target type (OR'd); `has` is a reverse chain: the referring type and its
    reference parameter, with the referrer's criterion in `chain`."""

    name: str
    res_type: str
    param: SearchParam | None
    modifier: str | None
    values: list[str]
    chain: list[Criterion] = field(default_factory=list)
    target_types: tuple[str, ...] = ()
    has: tuple[str, str] | None = None
    missing: bool | None = None
    raw: str = ""  # the value as given (set on top-level criteria), for links that repeat the search
    #: Set on the copy a plan is built from (`search.plans`): the prefix of its values' bind parameters.
    bound: str | None = None


@dataclass
class Parsed:
    """Filters (AND'ed), result parameters (raw), and what lenient handling chose to ignore: the issues to
    report, and the (name, value) pairs dropped, which links to the search leave out."""

    criteria: list[Criterion] = field(default_factory=list)
    result: dict[str, list[str]] = field(default_factory=dict)
    ignored: list[Issue] = field(default_factory=list)
    dropped: set[tuple[str, str]] = field(default_factory=set)
    lenient: bool = False
    #: What `plans.shape` found for these criteria, by (FHIR base, reach), where it depends on nothing else.
    shapes: dict[tuple[str, str], Any] = field(default_factory=dict)

    def refuse(self, exc: SearchError, given: tuple[str, str] | None = None) -> None:
        """A parameter the node cannot honour: an error, or under lenient handling a warning to report."""
        if not self.lenient:
            raise exc
        issue = exc.issue
        self.ignored.append(Issue("warning", issue.code, f"Ignored: {issue.diagnostics}", issue.expression))
        if given is not None:
            self.dropped.add(given)


class SearchError(Exception):
    """A parameter the node cannot use; carries the issue naming it."""

    def __init__(self, issue: Issue) -> None:
        super().__init__(issue.diagnostics)
        self.issue = issue


_ESCAPE = re.compile(r"\\([\\,$|])")


def unescape(value: str) -> str:
    """`\\,` `\\|` `\\$` `\\\\` as the characters they escape (most values hold no backslash: left as they are)."""
    return _ESCAPE.sub(r"\1", value) if "\\" in value else value


def split_values(raw: str) -> list[str]:
    """Comma means OR; `\\,` is a literal comma (unescaping of `|` and `$` is left to the type)."""
    return [v.replace("\\,", ",") for v in _ESCAPED_SPLIT.split(raw)]


def split_prefix(value: str) -> tuple[str, str]:
    """`ge2024-01-01` -> ('ge', '2024-01-01'); no prefix means eq."""
    if len(value) > 2 and value[:2] in PREFIXES and not value[2].isalpha():
        return value[:2], value[2:]
    return "eq", value


def parse(registry: Registry, res_type: str, params: list[tuple[str, str]], lenient: bool = False) -> Parsed:
    """All parameters of one search on `res_type`."""
    out = Parsed(lenient=lenient)
    for name, raw in params:
        if _is_result_parameter(name):
            out.result.setdefault(name, []).append(raw)
            continue
        try:
            found = criterion(registry, res_type, name, raw)
        except SearchError as exc:
            out.refuse(exc, (name, raw))
            continue
        found.raw = raw
        out.criteria.append(found)
    return out


def _is_result_parameter(name: str) -> bool:
    base, _, modifier = name.partition(":")
    return name in RESULT_PARAMETERS or (base in ("_include", "_revinclude") and modifier in INCLUDE_MODIFIERS)


def criterion(registry: Registry, res_type: str, name: str, raw: str) -> Criterion:
    """One `name=value` on `res_type`; chains and _has recurse."""
    if name.startswith("_has:"):
        return _has(registry, res_type, name, raw)
    head, dot, rest = name.partition(".")
    code, _, modifier = head.partition(":")
    param = registry.get(res_type, code)
    if param is None:
        raise SearchError(error("not-supported", f"Unknown search parameter '{code}' for {res_type}", name))
    if dot:
        return _chain(registry, res_type, name, param, modifier or None, rest, raw)
    if modifier == "missing":
        if raw not in ("true", "false"):
            raise SearchError(error("value", f"{name} must be true or false, got '{raw}'", name))
        return Criterion(name, res_type, param, modifier, [], missing=raw == "true")
    targets: tuple[str, ...] = ()
    if modifier and param.type == "reference" and modifier[:1].isupper():
        targets, modifier = _reference_targets(param, modifier, name), ""
    if modifier and modifier not in MODIFIERS.get(param.type, frozenset()):
        raise SearchError(
            error("not-supported", f"Modifier ':{modifier}' is not supported on {param.type} parameter '{code}'", name)
        )
    values = split_values(raw)
    if any(v == "" for v in values):
        raise SearchError(error("value", f"Empty value in search parameter '{name}'", name))
    return Criterion(name, res_type, param, modifier or None, values, target_types=targets)


def _reference_targets(param: SearchParam, modifier: str | None, name: str) -> tuple[str, ...]:
    if modifier:
        if modifier not in KINDS:
            raise SearchError(error("not-supported", f"'{modifier}' is not a resource type this node serves", name))
        if param.targets and modifier not in param.targets:
            raise SearchError(error("value", f"{modifier} is not a target of '{param.code}'", name))
        return (modifier,)
    targets = tuple(t for t in param.targets if t in KINDS) if param.targets else tuple(KINDS)
    if not targets:
        raise SearchError(error("not-supported", f"'{param.code}' refers to no type this node serves", name))
    return targets


def _chain(
    registry: Registry, res_type: str, name: str, param: SearchParam, modifier: str | None, rest: str, raw: str
) -> Criterion:
    """`patient.identifier=x`, `subject:Patient.name=y`: the chained criterion applies to every target
    type that defines it."""
    if param.type != "reference":
        raise SearchError(
            error("invalid", f"Only reference parameters can be chained; '{param.code}' is {param.type}", name)
        )
    targets = _reference_targets(param, modifier, name)
    chained_code = re.split(r"[.:]", rest, maxsplit=1)[0]
    usable = tuple(t for t in targets if registry.get(t, chained_code) is not None)
    if not usable:
        raise SearchError(error("not-supported", f"No target of '{param.code}' has a parameter '{chained_code}'", name))
    inner = [criterion(registry, t, rest, raw) for t in usable]
    return Criterion(name, res_type, param, None, [], chain=inner, target_types=usable)


def _has(registry: Registry, res_type: str, name: str, raw: str) -> Criterion:
    """`_has:Type:refparam:rest=value`: resources of `res_type` referred to by a `Type` matching `rest`."""
    parts = name.split(":", 3)
    if len(parts) < 4:
        raise SearchError(error("invalid", f"_has needs _has:Type:reference:parameter, got '{name}'", name))
    _, ref_type, ref_code, rest = parts
    if ref_type not in KINDS:
        raise SearchError(error("not-supported", f"'{ref_type}' is not a resource type this node serves", name))
    ref = registry.get(ref_type, ref_code)
    if ref is None or ref.type != "reference":
        raise SearchError(error("not-supported", f"'{ref_code}' is not a reference parameter of {ref_type}", name))
    inner = criterion(registry, ref_type, rest, raw)
    return Criterion(name, res_type, None, None, [], chain=[inner], has=(ref_type, ref_code))

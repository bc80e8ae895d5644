"""The invariants a load evaluates on nearly every resource, element or identifier, answered in Python.

fhirpathpy interprets an expression's tree on each call (100-600 us for these); loading synth data, they
were most of the validation time. Each function here answers one expression's text with the same
meaning: True or False, or None for a shape it leaves to fhirpathpy (a value where a string belongs, a
primitive carried only by its `_name` twin...), so it never has to be right about the unusual.
tests/test_native_invariants.py compares every answer with fhirpathpy's on valid and invalid resources.

Arguments: the element's JSON value, its `_name` twin, and the root resource (`%rootResource`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fhir_node.validation.narrative import narrative_problems

Native = Callable[[Any, dict[str, Any] | None, dict[str, Any]], bool | None]

_NS = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/"
_PSEUDONYMISED = "https://www.ehealth.fgov.be/standards/fhir/infsec/StructureDefinition/be-ext-pseudonymization"
_PLAIN = re.compile(r"[!-~]*")  # printable ASCII without spaces: FHIRPath `~` on it is a case-blind `=`


def _value_or_children(value: Any, twin: dict[str, Any] | None, root: dict[str, Any]) -> bool:
    """ele-1: `hasValue() or (children().count() > id.count())`."""
    if isinstance(value, dict):
        return any(k != "id" for k in value)
    return value is not None or any(k != "id" for k in twin or {})


def _safe_narrative(value: Any, twin: dict[str, Any] | None, root: dict[str, Any]) -> bool:
    """txt-1 and txt-2 (`htmlChecks()`, which fhirpathpy lacks): the narrative rules of narrative.py."""
    return not isinstance(value, str) or not narrative_problems(value)


def _exists(obj: dict[str, Any], key: str) -> bool | None:
    """`key.exists()` on a JSON object: None when only a `_key` twin or an empty value makes it unclear."""
    value = obj.get(key)
    if value is None:
        return None if f"_{key}" in obj else False
    return None if value in ([], {}) else True


def _local_reference(value: Any, twin: dict[str, Any] | None, root: dict[str, Any]) -> bool | None:
    """ref-1: a `#id` reference names a contained resource of the root resource."""
    if not isinstance(value, dict):
        return None
    reference = value.get("reference")
    if reference is None and "_reference" not in value:
        return True
    if not isinstance(reference, str) or len(reference) < 2:
        return None
    if not reference.startswith("#"):
        return True
    contained = root.get("contained", [])
    ids = [c.get("id") for c in contained if isinstance(c, dict)] if isinstance(contained, list) else [None]
    return reference[1:] in ids if all(isinstance(i, str) for i in ids) else None


def _nothing_contained(value: Any, twin: dict[str, Any] | None, root: dict[str, Any]) -> bool | None:
    """dom-2 to dom-5, all `contained.<something>.empty()`: met by a resource that contains nothing."""
    return True if isinstance(value, dict) and "contained" not in value and "_contained" not in value else None


def _has_narrative(value: Any, twin: dict[str, Any] | None, root: dict[str, Any]) -> bool | None:
    """dom-6: ``text.`div`.exists()``."""
    if not isinstance(value, dict):
        return None
    text = value.get("text")
    if text is None:
        return None if "_text" in value else False
    return _exists(text, "div") if isinstance(text, dict) else None


def _name_or_query(value: Any, twin: dict[str, Any] | None, root: dict[str, Any]) -> bool | None:
    """sev-1 (AuditEvent.entity): `name.empty() or query.empty()`."""
    if not isinstance(value, dict):
        return None
    name, query = _exists(value, "name"), _exists(value, "query")
    return None if name is None or query is None else not (name and query)


def _outcome_described(value: Any, twin: dict[str, Any] | None, root: dict[str, Any]) -> bool | None:
    """bihr-audit-1: `outcome = '0' or outcomeDesc.exists()`."""
    if not isinstance(value, dict) or "_outcome" in value:
        return None
    outcome = value.get("outcome")
    return True if outcome in (None, "0") else _exists(value, "outcomeDesc") if isinstance(outcome, str) else None


def _scope_has(value: Any, system: str, code: str) -> bool | None:
    """`scope.coding.where(system = S and code = C).exists()` on a Consent."""
    scope = value.get("scope", {})
    codings = scope.get("coding", []) if isinstance(scope, dict) else None
    if not isinstance(codings, list) or not all(isinstance(c, dict) for c in codings):
        return None
    values = [(c.get("system"), c.get("code")) for c in codings]
    if not all(isinstance(s, str | None) and isinstance(k, str | None) for s, k in values):
        return None
    return (system, code) in values


def _patient_or_not_scope(code: str) -> Native:
    """ppc-1 to ppc-4: `patient.exists() or scope.coding.where(system='something' and code=C).exists().not()`."""

    def check(value: Any, twin: dict[str, Any] | None, root: dict[str, Any]) -> bool | None:
        if not isinstance(value, dict):
            return None
        patient = _exists(value, "patient")
        if patient is None:
            return None
        scoped = _scope_has(value, "something", code)
        return True if patient else None if scoped is None else not scoped

    return check


def _privacy_has_patient(value: Any, twin: dict[str, Any] | None, root: dict[str, Any]) -> bool | None:
    """bihr-consent-1: a patient-privacy Consent names its patient (`... implies patient.exists()`)."""
    if not isinstance(value, dict):
        return None
    scoped = _scope_has(value, "http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy")
    return None if scoped is None else True if not scoped else _exists(value, "patient")


def _extension_or_value(value: Any, twin: dict[str, Any] | None, root: dict[str, Any]) -> bool | None:
    """ext-1: `extension.exists() != value.exists()`: an Extension has nested extensions or a value, not both."""
    if not isinstance(value, dict) or any(k.startswith("_value") for k in value):
        return None
    nested = _exists(value, "extension")
    given = [k for k in value if k.startswith("value") and k[5:6].isupper()]
    if nested is None or len(given) > 1 or (given and value[given[0]] in (None, [], {})):
        return None
    return nested != bool(given)


_DAY_PRECISIONS = (re.compile(r"[0-9]{4}"), re.compile(r"[0-9]{4}-[0-9]{2}"), re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"))


def _start_before_end(value: Any, twin: dict[str, Any] | None, root: dict[str, Any]) -> bool | None:
    """per-1: `start.hasValue().not() or end.hasValue().not() or (start <= end)`; two dates of one precision
    (no time, no zone) compare as text, any other pair is left to fhirpathpy."""
    if not isinstance(value, dict) or "_start" in value or "_end" in value:
        return None
    start, end = value.get("start"), value.get("end")
    if start is None or end is None:
        return True
    if not isinstance(start, str) or not isinstance(end, str):
        return None
    same = any(p.fullmatch(start) and p.fullmatch(end) for p in _DAY_PRECISIONS)
    return start <= end if same else None


def _system_among(systems: tuple[str, ...]) -> Native:
    """`system = 'A' or system = 'B' ...` on an Identifier: no system leaves the `or` empty, which holds."""

    def check(value: Any, twin: dict[str, Any] | None, root: dict[str, Any]) -> bool | None:
        if not isinstance(value, dict) or "_system" in value:
            return None
        system = value.get("system")
        return True if system is None else system in systems if isinstance(system, str) else None

    return check


def _first_of_month(value: Any, twin: dict[str, Any] | None, root: dict[str, Any]) -> bool | None:
    """bihr-billing-1: `toString().matches('^[0-9]{4}-[0-9]{2}-01$')` on a date without time."""
    if twin is not None or not isinstance(value, str) or not any(p.fullmatch(value) for p in _DAY_PRECISIONS):
        return None
    return value.endswith("-01") and len(value) == 10


def _policy_given(value: Any, twin: dict[str, Any] | None, root: dict[str, Any]) -> bool | None:
    """ppc-1 (Consent): `policy.exists() or policyRule.exists()`."""
    if not isinstance(value, dict):
        return None
    answers = (_exists(value, "policy"), _exists(value, "policyRule"))
    return True if True in answers else None if None in answers else False


def _check_digits(systems: tuple[str, ...], pattern: str, rule: Callable[[str], bool]) -> Native:
    """bihr-ssin, bihr-nihdi, bihr-cbe on an Identifier: unless its system is another one or it is
    pseudonymised, its value matches `pattern` and passes `rule` (the expression's arithmetic)."""
    digits = re.compile(pattern)
    names = {s.lower() for s in systems}

    def check(value: Any, twin: dict[str, Any] | None, root: dict[str, Any]) -> bool | None:
        if not isinstance(value, dict) or twin is not None:
            return None
        system, number, number_twin = value.get("system"), value.get("value"), value.get("_value")
        if number_twin is not None and not isinstance(number_twin, dict):
            return None
        if not isinstance(system, str) or not _PLAIN.fullmatch(system):
            return True if system is None and "_system" not in value else None  # `~` with nothing: false
        if system.lower() not in names:
            return True
        marks, twin_marks = value.get("extension", []), (number_twin or {}).get("extension", [])
        if not isinstance(marks, list) or not isinstance(twin_marks, list):
            return None
        if any(isinstance(m, dict) and m.get("url") == _PSEUDONYMISED for m in marks + twin_marks):
            return True
        if number_twin is not None:
            return None
        if number is None:
            return False
        if not isinstance(number, str) or "\n" in number:
            return None
        return digits.fullmatch(number) is not None and rule(number)

    return check


def _ssin_rule(n: str) -> bool:
    month, body, check = int(n[2:4]), int(n[:9]), int(n[9:11])
    return (
        int(n[4:6]) <= 31
        and (month <= 12 or 20 <= month <= 32 or 40 <= month <= 52)
        and (97 - body % 97 == check or 97 - (body + 2_000_000_000) % 97 == check)
    )


def _nihdi_rule(n: str) -> bool:
    body, check = int(n[:6]), int(n[6:8])
    return 97 - body % 97 == check or 89 - body % 89 == check


def _cbe_rule(n: str) -> bool:
    return 97 - int(n[:8]) % 97 == int(n[8:10])


_IF_OTHER = (
    "iif(({}).not() or (extension('{p}') | value.extension('{p}')).exists(), true, "
    "value.exists() and value.first().all({}))"
)
_SSIN_EXPRESSION = _IF_OTHER.format(
    f"system ~ '{_NS}ssin'",
    "matches('^[0-9]{11}$') and substring(4, 2).toInteger() <= 31 and (substring(2, 2).toInteger() <= 12 or "
    "(substring(2, 2).toInteger() >= 20 and substring(2, 2).toInteger() <= 32) or "
    "(substring(2, 2).toInteger() >= 40 and substring(2, 2).toInteger() <= 52)) and "
    "(97 - (substring(0, 9).toDecimal() mod 97) = substring(9, 2).toDecimal() or "
    "97 - ((substring(0, 9).toDecimal() + 2000000000) mod 97) = substring(9, 2).toDecimal())",
    p=_PSEUDONYMISED,
)
_NIHDI_SYSTEMS = (f"{_NS}nihdi", f"{_NS}nihdi-professional", f"{_NS}nihdi-organization")
_NIHDI_EXPRESSION = _IF_OTHER.format(
    " or ".join(f"system ~ '{s}'" for s in _NIHDI_SYSTEMS),
    "matches('^[0-9]{8}([0-9]{3})?$') and (97 - (substring(0, 6).toDecimal() mod 97) = substring(6, 2).toDecimal() "
    "or 89 - (substring(0, 6).toDecimal() mod 89) = substring(6, 2).toDecimal())",
    p=_PSEUDONYMISED,
)
_CBE_EXPRESSION = _IF_OTHER.format(
    f"system ~ '{_NS}cbe'",
    "matches('^[01][0-9]{9}$') and 97 - (substring(0, 8).toDecimal() mod 97) = substring(8, 2).toDecimal()",
    p=_PSEUDONYMISED,
)

#: Expression text (as the definitions spell it) -> its answer in Python.
NATIVE: dict[str, Native] = {
    "hasValue() or (children().count() > id.count())": _value_or_children,
    "htmlChecks()": _safe_narrative,
    "reference.startsWith('#').not() or (reference.substring(1).trace('url') in %rootResource.contained.id"
    ".trace('ids'))": _local_reference,
    "contained.contained.empty()": _nothing_contained,
    "contained.meta.versionId.empty() and contained.meta.lastUpdated.empty()": _nothing_contained,
    "contained.meta.security.empty()": _nothing_contained,
    "contained.where((('#'+id in (%resource.descendants().reference | %resource.descendants().as(canonical) | "
    "%resource.descendants().as(uri) | %resource.descendants().as(url))) or descendants().where(reference = '#')"
    ".exists() or descendants().where(as(canonical) = '#').exists() or descendants().where(as(canonical) = '#')"
    ".exists()).not()).trace('unmatched', id).empty()": _nothing_contained,
    "text.`div`.exists()": _has_narrative,
    "name.empty() or query.empty()": _name_or_query,
    "outcome = '0' or outcomeDesc.exists()": _outcome_described,
    **{
        f"patient.exists() or scope.coding.where(system='something' and code='{code}').exists().not()": (
            _patient_or_not_scope(code)
        )
        for code in ("patient-privacy", "research", "treatment", "adr")
    },
    "scope.coding.where(system = 'http://terminology.hl7.org/CodeSystem/consentscope' and code = 'patient-privacy')"
    ".exists() implies patient.exists()": _privacy_has_patient,
    "extension.exists() != value.exists()": _extension_or_value,
    "start.hasValue().not() or end.hasValue().not() or (start <= end)": _start_before_end,
    " or ".join(f"system = '{s}'" for s in _NIHDI_SYSTEMS): _system_among(_NIHDI_SYSTEMS),
    "toString().matches('^[0-9]{4}-[0-9]{2}-01$')": _first_of_month,
    "policy.exists() or policyRule.exists()": _policy_given,
    _SSIN_EXPRESSION: _check_digits((f"{_NS}ssin",), "[0-9]{11}", _ssin_rule),
    _NIHDI_EXPRESSION: _check_digits(_NIHDI_SYSTEMS, "[0-9]{8}(?:[0-9]{3})?", _nihdi_rule),
    _CBE_EXPRESSION: _check_digits((f"{_NS}cbe",), "[01][0-9]{9}", _cbe_rule),
}

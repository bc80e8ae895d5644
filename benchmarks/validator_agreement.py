"""Agreement of `fhir_node.validation.validator.validate()` with HL7's reference validator on the public
FHIR test cases (github.com/FHIR/fhir-test-cases, `validator/`), from a local checkout; no network.

Cases taken: FHIR R4 (`version` 4.0 / 4.0.x), JSON, used (`use-test` not false), needing nothing but
the core specification: no packages, supporting files, profiles, logical models or special settings.
The expected verdict is the Java validator's: invalid when its recorded outcome has an error or fatal
issue. A case agrees when `validate()` finds an error exactly when Java does. Files are read as HL7's
tools read them, a byte-order mark skipped (`utf-8-sig`).

Two figures: the cases whose resource is of a type the node serves or publishes (OUR_TYPES), the goal,
and the whole corpus beside it. The test cases' commit is printed with them (figures move with it).

    python benchmarks/validator_agreement.py /path/to/fhir-test-cases [--list]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from fhir_node.registry import KINDS
from fhir_node.validation.validator import has_errors, validate

#: The types the node serves or publishes, and the Bundles that carry them.
OUR_TYPES = frozenset(KINDS) | {"Bundle"}

#: Manifest keys that make a case need more than the core specification (or a non-default setting).
NEEDS_MORE = frozenset(
    {
        "packages", "supporting", "supporting5", "profiles", "profile", "logical", "package-map", "bundle-param",
        "ips", "fetcher", "security-checks", "for-publication", "examples", "best-practice",
        "allowed-extension-domain", "assumeValidRestReferences", "validateReference", "certificate", "advisor",
        "crumb-trail", "language", "no-experimental-content", "r5-bundle-relative-reference-policy",
        "new-xver-mode", "noHtmlInMarkdown", "allow-comments", "validateContains", "sct", "tags", "matchetype",
    }
)  # fmt: skip


def cases(root: Path) -> list[dict[str, Any]]:
    manifest = json.loads((root / "validator" / "manifest.json").read_text())
    return [
        c
        for c in manifest["test-cases"]
        if str(c.get("version", "")).startswith("4.0")
        and c["file"].endswith(".json")
        and c.get("use-test", True) is not False
        and not NEEDS_MORE & set(c)
        and "java" in c
    ]


def expected_invalid(root: Path, case: dict[str, Any]) -> bool | None:
    """Java's verdict: from its recorded outcome file, or an older manifest's errorCount."""
    java = case["java"]
    if isinstance(java, dict):
        return java.get("errorCount", 0) > 0
    outcome = root / "validator" / "outcomes" / java
    if not outcome.exists():
        return None
    issues = json.loads(outcome.read_text()).get("issue", [])
    return any(i.get("severity") in ("error", "fatal") for i in issues)


def commit_of(checkout: Path) -> str:
    """The checkout's commit and date, or a note that it is not a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(checkout), "log", "-1", "--format=%H (%cs)"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return out.stdout.strip()


def judge(root: Path, case: dict[str, Any]) -> tuple[str, str | None]:
    """(verdict, resourceType): agree, false error, missed error, or skipped."""
    source = root / "validator" / case["file"]
    want = expected_invalid(root, case)
    if want is None or not source.exists():
        return "skipped (file or outcome missing)", None
    try:
        resource = json.loads(source.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ("agree" if want else "false error"), None  # unparseable JSON is invalid to any validator
    got = has_errors(validate(resource))
    res_type = resource.get("resourceType") if isinstance(resource, dict) else None
    return ("agree" if got == want else ("false error" if got else "missed error")), res_type


def report(title: str, tally: Counter[str]) -> None:
    judged = tally["agree"] + tally["false error"] + tally["missed error"]
    share = f"{tally['agree'] / judged:.1%}" if judged else "n/a"
    print(f"{title}: {tally['agree']}/{judged} agree ({share})")
    for verdict, n in sorted(tally.items()):
        print(f"  {verdict}: {n}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout", type=Path, help="a local checkout of FHIR/fhir-test-cases")
    parser.add_argument("--list", action="store_true", help="print each disagreement")
    args = parser.parse_args()
    whole: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    by_module: dict[str, Counter[str]] = {}
    for case in cases(args.checkout):
        verdict, res_type = judge(args.checkout, case)
        whole[verdict] += 1
        if res_type in OUR_TYPES:
            ours[verdict] += 1
        by_module.setdefault(case.get("module", "?"), Counter())[verdict] += 1
        if args.list and verdict in ("false error", "missed error"):
            print(f"{verdict:12} {case['name']} ({case.get('module')}, {res_type})")
    print(f"fhir-test-cases commit {commit_of(args.checkout)}; R4 core-only JSON cases")
    report(f"of our types ({', '.join(sorted(OUR_TYPES))})", ours)
    report("whole corpus", whole)
    for module, counts in sorted(by_module.items()):
        print(f"  {module:14} {counts['agree']}/{sum(counts.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

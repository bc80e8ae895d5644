"""Agreement of `fhir_node.validation.validator.validate()` with HL7's reference validator on the public
FHIR test cases (github.com/FHIR/fhir-test-cases, `validator/`), from a local checkout; no network.

Cases taken: FHIR R4 (`version` 4.0 / 4.0.x), JSON, used (`use-test` not false), needing nothing but
the core specification: no packages, supporting files, profiles, logical models or special settings.
The expected verdict is the Java validator's: invalid when its recorded outcome has an error or fatal
issue. A case agrees when `validate()` finds an error exactly when Java does.

    python benchmarks/validator_agreement.py /path/to/fhir-test-cases [--list]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from fhir_node.validation.validator import has_errors, validate

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout", type=Path, help="a local checkout of FHIR/fhir-test-cases")
    parser.add_argument("--list", action="store_true", help="print each disagreement")
    args = parser.parse_args()
    tally: Counter[str] = Counter()
    by_module: dict[str, Counter[str]] = {}
    for case in cases(args.checkout):
        source = args.checkout / "validator" / case["file"]
        want = expected_invalid(args.checkout, case)
        if want is None or not source.exists():
            tally["skipped (file or outcome missing)"] += 1
            continue
        try:
            resource = json.loads(source.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            got = True  # unparseable JSON is invalid to any validator
        else:
            got = has_errors(validate(resource))
        verdict = "agree" if got == want else ("false error" if got else "missed error")
        tally[verdict] += 1
        by_module.setdefault(case.get("module", "?"), Counter())[verdict] += 1
        if args.list and got != want:
            print(f"{verdict:12} {case['name']} ({case.get('module')})")
    judged = tally["agree"] + tally["false error"] + tally["missed error"]
    print(f"R4 core-only JSON cases judged: {judged}")
    for verdict, n in sorted(tally.items()):
        print(f"  {verdict}: {n}")
    print(f"agreement: {tally['agree'] / judged:.1%}" if judged else "agreement: n/a")
    for module, counts in sorted(by_module.items()):
        total = sum(counts.values())
        print(f"  {module:14} {counts['agree']}/{total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

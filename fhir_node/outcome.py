"""OperationOutcome issues and the one exception every layer raises for a FHIR error answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue: severity, code (IssueType), text, FHIRPath of the element."""

    severity: str
    code: str
    diagnostics: str
    expression: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def error(code: str, diagnostics: str, *expression: str) -> Issue:
    """Shorthand for an error-severity issue."""
    return Issue("error", code, diagnostics, tuple(expression))


@dataclass
class FHIRError(Exception):
    """Raised anywhere below the HTTP layer; the API turns it into `status` + OperationOutcome."""

    status: int
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status}: " + "; ".join(i.diagnostics for i in self.issues)


def fail(status: int, code: str, diagnostics: str, *expression: str) -> FHIRError:
    """Build a FHIRError with a single error issue (callers `raise fail(...)`)."""
    return FHIRError(status, [error(code, diagnostics, *expression)])


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    """An OperationOutcome resource; R4 requires at least one issue, so an empty list says 'all ok'."""
    body = [i.to_json() for i in issues] or [
        {"severity": "information", "code": "informational", "diagnostics": "All OK"}
    ]
    return {"resourceType": "OperationOutcome", "issue": body}

"""Small-cell suppression: a count of fewer than `minimum` patients' records is not published, so a
researcher cannot single out a few people by narrowing a query.

The count is withheld, not rounded: Bundle.total is left out and its `_total` carries the standard
data-absent-reason extension with `masked` ("not available due to security, privacy or related
reasons"). A client that ignores extensions sees what a
server that did not count answers (no total, as HAPI FHIR answers by default and whenever its consent
interceptor may have hidden resources), never a wrong number.

Callers that add counts up (the federation summing several nodes) apply `suppressed` to the sum, not
to each part: parts below the threshold may add up to a publishable total."""

from __future__ import annotations

from typing import Any

DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"


def suppressed(count: int, minimum: int) -> bool:
    """Whether `count` must be withheld: below `minimum` (zero included: an empty cell discloses too)."""
    return count < minimum


def bundle_total(count: int | None, minimum: int | None) -> dict[str, Any]:
    """The Bundle fields for a total: `{"total": n}`, `{}` when there is none, or the masked `_total`
    when `minimum` applies (None: no suppression for this caller) and the count falls below it."""
    if count is None:
        return {}
    if minimum is None or not suppressed(count, minimum):
        return {"total": count}
    return withheld()


def withheld() -> dict[str, Any]:
    """The Bundle fields of a withheld total (the masked `_total`), for callers that decided it themselves."""
    return {"_total": {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "masked"}]}}


def masked(bundle: dict[str, Any]) -> bool:
    """Whether a Bundle's total was withheld this way (by this node or another one)."""
    extensions = (bundle.get("_total") or {}).get("extension") or []
    return any(e.get("url") == DATA_ABSENT_REASON and e.get("valueCode") == "masked" for e in extensions)

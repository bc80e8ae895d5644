"""Who is asking: the identity provider's claims, read once per request into a Principal."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, get_args

from fhir_node.rules.check_digits import ssin_error

Role = Literal["patient", "provider", "pharmacist", "psi-admin", "psi-coordinator", "aggregator", "insurer", "operator"]
ROLES: tuple[str, ...] = get_args(Role)

#: SMART v2 permission letters, and the v1 words that mean a set of them.
_LETTERS = "cruds"
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.(\*|read|write|[cruds]+)(?:\?.*)?")


@dataclass(frozen=True)
class Scopes:
    """Granted SMART scopes as {resource type or '*': letters}. The launch context (patient/user/system)
    does not widen anything here: the role decides whose data, the scope only which types and actions."""

    grants: dict[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Scopes:
        """`system/EpisodeOfCare.rs patient/Consent.cruds user/*.read` (v2 letters or v1 words); other
        scopes (openid, launch, fhirUser, ...) grant nothing here. Letters must be in c-r-u-d-s order."""
        grants: dict[str, set[str]] = {}
        for token in text.split():
            m = _SCOPE.fullmatch(token)
            if not m:
                continue
            _, res_type, perms = m.groups()
            letters = _V1.get(perms, perms)
            if perms not in _V1 and "".join(sorted(letters, key=_LETTERS.index)) != letters:
                continue
            grants.setdefault(res_type, set()).update(letters)
        return cls({t: frozenset(v) for t, v in grants.items()})

    def allows(self, res_type: str, letter: str) -> bool:
        return letter in self.grants.get(res_type, ()) or letter in self.grants.get("*", ())


@dataclass(frozen=True)
class Principal:
    """The authenticated caller. `sub` is the acting person's SSIN, or a system's client id; `nihdi` the
    provider's or pharmacy's NIHDI number; `psi` the project's NIHDI number (PSI roles)."""

    sub: str
    role: Role
    scopes: Scopes
    nihdi: str | None = None
    psi: str | None = None
    client_id: str | None = None

    @cached_property
    def is_person(self) -> bool:
        """People act under their SSIN; the aggregator, the insurers and the operator may be systems."""
        return self.role not in ("aggregator", "insurer", "operator") or ssin_error(self.sub) is None


#: FHIR_NODE_AUTH=none: the local operator, with every scope.
LOCAL_OPERATOR = Principal("local-operator", "operator", Scopes({"*": frozenset(_LETTERS)}))

"""Therapeutic relationships: the patients a provider, or a pharmacist's pharmacy, is caring for.

They come from a RelationshipSource. The built-in one reads the CareTeams the operator loads, so the node
runs alone; an external attribute service takes its place in `relationship_source`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson
from sqlalchemy import Connection, and_, false, or_, select

from fhir_node.search.values import dates, references
from fhir_node.security.keyring import installed
from fhir_node.security.principal import Principal
from fhir_node.settings import Settings
from fhir_node.store.schema import idx_reference, idx_token, resources

_NAMING = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/"
SSIN = f"{_NAMING}ssin"
NIHDI = f"{_NAMING}nihdi"
NIHDI_PROFESSIONAL = f"{_NAMING}nihdi-professional"
NIHDI_ORGANIZATION = f"{_NAMING}nihdi-organization"
NIHDI_SYSTEMS = (NIHDI, NIHDI_PROFESSIONAL, NIHDI_ORGANIZATION)
#: Per role: the resource type standing for the principal in a CareTeam, and the NIHDI systems a logical
#: reference to it may use (the generic one or its own kind's: a provider is never an organization number).
_MEMBERS = {
    "provider": ("Practitioner", (NIHDI, NIHDI_PROFESSIONAL)),
    "pharmacist": ("Organization", (NIHDI, NIHDI_ORGANIZATION)),
}


class RelationshipSource(Protocol):
    """Where therapeutic relationships come from."""

    def patients(self, conn: Connection, principal: Principal, at: datetime) -> frozenset[str]:
        """Ids of the Patient resources with which the principal (a provider: its NIHDI as a Practitioner;
        a pharmacist: its pharmacy's NIHDI as an Organization) has a relationship current at `at` (naive UTC)."""
        ...


class CareTeamRelationships:
    """The built-in source: a live CareTeam (status absent or active, its period covering the moment) relates
    its subject to each participant whose period covers the moment. The index tables find the CareTeams that
    name the principal at all; only those are read, to check periods and which participant names it."""

    def patients(self, conn: Connection, principal: Principal, at: datetime) -> frozenset[str]:
        """See RelationshipSource.patients; other roles have no relationships."""
        if principal.role not in _MEMBERS or not principal.nihdi:
            return frozenset()
        member_type, systems = _MEMBERS[principal.role]
        member = _Member(member_type, systems, principal.nihdi, _ids_with_nihdi(conn, member_type, principal.nihdi))
        patient_ids: set[str] = set()
        ssins: set[str] = set()
        for team in _candidates(conn, member):
            if _current(team, at) and any(
                _covers(p.get("period"), at) and member.named_by(p.get("member")) for p in team.get("participant", [])
            ):
                for row in references(team.get("subject")):
                    if row["target_type"] == "Patient" and row["target_id"]:
                        patient_ids.add(row["target_id"])
                    elif row["id_system"] == SSIN and row["target_type"] in (None, "Patient"):
                        ssins.add(row["id_value"])
        return frozenset(patient_ids | _patients_with_ssin(conn, ssins))


@dataclass(frozen=True)
class _Member:
    """The principal as a CareTeam names it: a stored resource (`ids`) or a logical reference (by NIHDI)."""

    res_type: str
    systems: tuple[str, ...]
    nihdi: str
    ids: frozenset[str]

    def named_by(self, reference: Any) -> bool:
        """Whether a participant's `member` is the principal (read as the index reads it)."""
        return any(
            (row["target_type"] == self.res_type and row["target_id"] in self.ids)
            or (
                row["id_system"] in self.systems
                and row["id_value"] == self.nihdi
                and row["target_type"] in (None, self.res_type)
            )
            for row in references(reference)
        )


def _ids_with_nihdi(conn: Connection, res_type: str, nihdi: str) -> frozenset[str]:
    """Ids of the live resources of `res_type` carrying this NIHDI number (deletions leave no index rows)."""
    t = idx_token.c
    q = select(t.res_id).where(
        t.res_type == res_type, t.param == "identifier", t.system.in_(NIHDI_SYSTEMS), t.code == nihdi
    )
    return frozenset(conn.scalars(q))


def _candidates(conn: Connection, member: _Member) -> Iterable[dict[str, Any]]:
    """The live CareTeams with a participant naming the principal, whatever its period."""
    ref = idx_reference.c
    named = [
        and_(
            ref.id_system.in_(member.systems),
            ref.id_value == member.nihdi,
            or_(ref.target_type.is_(None), ref.target_type == member.res_type),
        )
    ]
    if member.ids:
        named.append(and_(ref.target_type == member.res_type, ref.target_id.in_(member.ids)))
    teams = select(ref.res_id).where(ref.res_type == "CareTeam", ref.param == "participant", or_(*named))
    r = resources.c
    q = select(r.content).where(r.res_type == "CareTeam", r.deleted == false(), r.res_id.in_(teams))
    return (orjson.loads(content) for content in conn.scalars(q))


def _current(team: dict[str, Any], at: datetime) -> bool:
    """Only an active CareTeam (or one without status) counts, and only within its period."""
    return team.get("status", "active") == "active" and _covers(team.get("period"), at)


def _covers(period: dict[str, Any] | None, at: datetime) -> bool:
    """Absent ends are open; a partial date covers all of it (an end of 2024-06-30 includes that whole day)."""
    found = dates(period) if period else []
    return not found or found[0]["low"] <= at <= found[0]["high"]


def _patients_with_ssin(conn: Connection, ssins: set[str]) -> set[str]:
    """Ids of the live Patients carrying one of these SSINs (pseudonyms, possibly of an older key than the
    Patient's: each is looked up under every key)."""
    if not ssins:
        return set()
    ring = installed()
    stored = {form for ssin in ssins for form in ring.forms(ssin)}
    t = idx_token.c
    q = select(t.res_id).where(t.res_type == "Patient", t.param == "identifier", t.system == SSIN, t.code.in_(stored))
    return set(conn.scalars(q))


def relationship_source(settings: Settings) -> RelationshipSource:
    """The source the node uses: the built-in CareTeams until an external attribute service is configured."""
    return CareTeamRelationships()

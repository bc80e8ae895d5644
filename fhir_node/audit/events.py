"""AuditEvents built by the node, by construction conformant to our `bihr-audit-*` profiles (IHE BALP
RESTful interactions and their patient variants): tests validate them, requests do not pay for it. Their
search index rows are read off that known shape too (`index_rows`), not extracted by FHIRPath."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import orjson

from fhir_node.search.fhirpath import resolve_literal
from fhir_node.search.values import EXTRACTORS, unwrap_extension
from fhir_node.security.access import Access, Record
from fhir_node.security.policy import SSIN
from fhir_node.store.repository import instant, now
from fhir_node.store.schema import INDEX_TABLES

CANONICAL = "https://fhir-node.be/fhir/StructureDefinition"
#: The hash (SHA-256, hex) of the node's previous AuditEvent: the chain `fhir-node audit verify` walks.
CHAIN_EXTENSION = f"{CANONICAL}/audit-chain-previous"
ROLE_SYSTEM = "https://fhir-node.be/fhir/CodeSystem/node-role"
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_RESTFUL = "http://hl7.org/fhir/restful-interaction"
_BALP_ENTITY = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"

#: interaction -> (action, profile or None, client agent type, server agent type, user agent type)
_SHAPES: dict[str, tuple[str, str | None, tuple[str, str], tuple[str, str], str]] = {}
_SOURCE = (_DCM, "110153")
_DESTINATION = (_DCM, "110152")
for _code in ("read", "vread"):
    _SHAPES[_code] = ("R", "read", _DESTINATION, _SOURCE, "IRCP")
for _code in ("search-type", "search-system", "history-instance", "history-type", "history-system"):
    _SHAPES[_code] = ("E", "query", _SOURCE, _DESTINATION, "IRCP")
_SHAPES["create"] = ("C", "create", _SOURCE, _DESTINATION, "AUT")
_SHAPES["update"] = _SHAPES["patch"] = ("U", "update", _SOURCE, _DESTINATION, "AUT")
_SHAPES["delete"] = (
    "D",
    "delete",
    (_DCM, "110150"),
    ("http://terminology.hl7.org/CodeSystem/provenance-participant-type", "custodian"),
    "CST",
)
for _code in ("transaction", "batch", "operation"):
    _SHAPES[_code] = ("E", None, _SOURCE, _DESTINATION, "AUT")


def build(access: Access, record: Record, status: int, server: str) -> dict[str, Any]:
    """The AuditEvent of one request (or of one committed write within it) that answered `status`; without
    its chain link (CHAIN_EXTENSION), which `chain.extend` adds when it is written."""
    action, profile, client_type, server_type, user_type = _SHAPES[record.interaction]
    patients = sorted(record.patients)
    event: dict[str, Any] = {"resourceType": "AuditEvent"}
    if profile is not None:
        variant = "patient-" if len(patients) == 1 else ""
        event["meta"] = {"profile": [f"{CANONICAL}/bihr-audit-{variant}{profile}"]}
    event |= {
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": _RESTFUL, "code": record.interaction}],
        "action": action,
        "recorded": instant(now()),
        "outcome": "0" if status < 400 else "4" if status < 500 else "8",
        "outcomeDesc": f"HTTP {status}",
        "agent": _agents(access, client_type, server_type, user_type, server),
        "source": {
            "observer": {"display": "fhir-node"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}],
        },
        "entity": _entities(access, record, profile, patients),
    }
    return event


def _agents(
    access: Access, client_type: tuple[str, str], server_type: tuple[str, str], user_type: str, server: str
) -> list[dict[str, Any]]:
    p = access.principal
    authenticated = access.request_id != "" and p.sub != ""
    role = {"coding": [{"system": ROLE_SYSTEM, "code": p.role}]} if authenticated else None
    person = authenticated and p.is_person
    client: dict[str, Any] = {
        "type": _concept(client_type),
        "who": {"identifier": {"value": p.client_id or p.sub}} if authenticated and (p.client_id or not person)
        else {"display": access.user_agent or "unknown client"},
        "requestor": not person,
        "network": {"address": access.client or "unknown", "type": "2"},
    }
    if role and not person:
        client["role"] = [role]
    agents = [
        client,
        {
            "type": _concept(server_type),
            "who": {"display": "fhir-node"},
            "requestor": False,
            "network": {"address": server, "type": "5"},
        },
    ]
    if person:
        user: dict[str, Any] = {
            "type": _concept(("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", user_type)),
            "role": [role],
            "who": {"identifier": {"system": SSIN, "value": p.sub}},
            "requestor": True,
        }
        if p.nihdi or p.psi:
            user["altId"] = p.nihdi or p.psi
        agents.append(user)
    return agents


def _entities(access: Access, record: Record, profile: str | None, patients: list[str]) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = [
        {
            "what": {"identifier": {"value": access.request_id}},
            "type": {"system": _BALP_ENTITY, "code": "XrequestId"},
        }
    ]
    if profile == "query":
        query = f"{record.method} {record.path}" + (f"?{record.query}" if record.query else "")
        entities.append(
            {
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24"},
                "query": base64.b64encode(query.encode()).decode(),
            }
        )
    else:
        touched = record.entities or ([(record.res_type, record.res_id)] if record.res_type and record.res_id else [])
        if profile is not None:
            touched = touched[:1] or [(record.res_type or "Resource", record.res_id or "unknown")]
        entities += [
            {
                "what": {"reference": f"{t}/{i}"},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4"},
            }
            for t, i in touched
        ]
    entities += [
        {
            "what": {"reference": f"Patient/{pid}"},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
        }
        for pid in patients
    ]
    return entities


def _concept(coding: tuple[str, str]) -> dict[str, Any]:
    return {"coding": [{"system": coding[0], "code": coding[1]}]}


IndexRows = dict[str, list[dict[str, Any]]]


def index_rows(event: dict[str, Any]) -> IndexRows:
    """The search index rows of an AuditEvent `build` made, in its stored form (id and meta set), per
    parameter type, every column filled: what `search.index.rows` extracts from it (tests hold them equal),
    read off the shape built here instead of evaluating each AuditEvent search parameter."""
    found = _Found(event)
    for param, (kind, select) in _PARAMS.items():
        found.add(kind, param, select(found))
    return found.rows


class _Found:
    """One AuditEvent's parts and the index rows found so far, each once per parameter (as `rows` removes
    duplicates). Values are converted by values.py's extractors, each distinct value once."""

    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event
        self.meta: dict[str, Any] = event["meta"]
        self.agents: list[dict[str, Any]] = event.get("agent", [])
        self.entities: list[dict[str, Any]] = event.get("entity", [])
        self.source: dict[str, Any] = event.get("source", {})
        self.whos = _each(self.agents, "who")
        self.whats = _each(self.entities, "what")
        self.rows: IndexRows = {}
        self._key = ("AuditEvent", event["id"])
        self._seen: set[tuple[Any, ...]] = set()
        self._converted: dict[str, dict[str | bytes, list[tuple[Any, ...]]]] = {kind: {} for kind in _COLUMNS}

    def add(self, kind: str, param: str, values: list[Any]) -> None:
        columns = _COLUMNS[kind]
        prefix = (*self._key, param)
        for value in values:
            for converted in self._convert(kind, value):
                row = prefix + converted
                if row not in self._seen:
                    self._seen.add(row)
                    self.rows.setdefault(kind, []).append(dict(zip(columns, row, strict=False)))

    def _convert(self, kind: str, value: Any) -> list[tuple[Any, ...]]:
        """The value columns `kind`'s extractor gives `value`, worked out once per distinct value."""
        converted = self._converted[kind]
        memo = value if isinstance(value, str) else orjson.dumps(value)
        found = converted.get(memo)
        if found is None:
            columns = _COLUMNS[kind][3:]
            extracted = EXTRACTORS[kind](unwrap_extension(value))
            found = converted[memo] = [tuple(map(r.get, columns)) for r in extracted]
        return found

    def patients(self) -> list[Any]:
        """`where(resolve() is Patient)` on agent.who and entity.what: for a relative `Type/id`, the local
        target of its first reference row (identifier rows have no target_id); any other reference asks
        `resolve_literal`, as the index expression does."""
        out = []
        for value in self.whos + self.whats:
            ref = value.get("reference") if isinstance(value, dict) else None
            if not isinstance(ref, str):
                continue
            if ref.count("/") == 1:
                first = self._convert("reference", value)[:1]
                patient = bool(first) and first[0][0] == "Patient" and first[0][1] is not None
            else:
                patient = any(node.data["resourceType"] == "Patient" for node in resolve_literal([value]))
            if patient:
                out.append(value)
        return out


def _each(items: list[dict[str, Any]], key: str) -> list[Any]:
    """`items.key`, arrays flattened, as a FHIRPath path step gives it."""
    out: list[Any] = []
    for item in items:
        value = item.get(key)
        if isinstance(value, list):
            out.extend(value)
        elif value is not None:
            out.append(value)
    return out


#: The AuditEvent search parameters the index holds: (type, the values its expression selects).
_PARAMS: dict[str, tuple[str, Callable[[_Found], list[Any]]]] = {
    "action": ("token", lambda f: _each([f.event], "action")),
    "address": ("string", lambda f: _each(_each(f.agents, "network"), "address")),
    "agent": ("reference", lambda f: f.whos),
    "agent-name": ("string", lambda f: _each(f.agents, "name")),
    "agent-role": ("token", lambda f: _each(f.agents, "role")),
    "altid": ("token", lambda f: _each(f.agents, "altId")),
    "date": ("date", lambda f: _each([f.event], "recorded")),
    "entity": ("reference", lambda f: f.whats),
    "entity-name": ("string", lambda f: _each(f.entities, "name")),
    "entity-role": ("token", lambda f: _each(f.entities, "role")),
    "entity-type": ("token", lambda f: _each(f.entities, "type")),
    "outcome": ("token", lambda f: _each([f.event], "outcome")),
    "patient": ("reference", _Found.patients),
    "policy": ("uri", lambda f: _each(f.agents, "policy")),
    "site": ("token", lambda f: _each([f.source], "site")),
    "source": ("reference", lambda f: _each([f.source], "observer")),
    "subtype": ("token", lambda f: _each([f.event], "subtype")),
    "type": ("token", lambda f: _each([f.event], "type")),
    "_id": ("token", lambda f: _each([f.event], "id")),
    "_lastUpdated": ("date", lambda f: _each([f.meta], "lastUpdated")),
    "_profile": ("uri", lambda f: _each([f.meta], "profile")),
    "_security": ("token", lambda f: _each([f.meta], "security")),
    "_source": ("uri", lambda f: _each([f.meta], "source")),
    "_tag": ("token", lambda f: _each([f.meta], "tag")),
}
#: Index columns per parameter type, in table order: res_type, res_id, param, then the values.
_COLUMNS = {kind: tuple(c.name for c in table.columns) for kind, table in INDEX_TABLES.items()}
#: What `index_rows` covers: when the registry gives AuditEvent other parameters, `rows` is used instead.
INDEXED = frozenset(_PARAMS)

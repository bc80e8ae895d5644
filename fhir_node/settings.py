"""One Settings object for the whole node, read from `FHIR_NODE_*` environment variables (and CLI flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything an operator can set; each field is `FHIR_NODE_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="FHIR_NODE_", extra="ignore")

    database_url: str = "sqlite:///./data/fhir-node.db"
    auth: Literal["none", "jwt"] = Field(
        "none",
        description="`jwt`: every request carries a Bearer JWT from the identity provider; "
        "`none`: every request acts as the node operator, only served on loopback.",
    )
    jwt_jwks: str | None = Field(
        None, description="The identity provider's keys: a JWKS file path, inline JSON, or an https URL."
    )
    jwt_issuer: str | None = Field(None, description="The `iss` every token must carry.")
    jwt_audience: str | None = Field(None, description="The `aud` every token must carry (this node's FHIR base).")
    jwt_leeway_seconds: int = Field(30, ge=0, le=300, description="Clock skew allowed on exp, nbf and iat.")
    jwt_jwks_cache_seconds: int = Field(3600, gt=0, description="How long keys fetched from a URL are kept.")
    smart_token_endpoint: str | None = Field(
        None, description="The identity provider's token endpoint, advertised in .well-known/smart-configuration."
    )
    tls_proxy: str | None = Field(
        None,
        description="Comma-separated addresses of the proxies that terminate TLS in front of the node; "
        "their X-Forwarded-* headers (and only theirs) are trusted.",
    )
    pseudonym_key_file: Path | None = Field(
        None,
        description="The SSIN pseudonym keys (`fhir-node keygen PATH`); required unless FHIR_NODE_AUTH=none on "
        "SQLite, where a key file is created beside the database.",
    )
    coordinator_max_count: int = Field(50, gt=0, description="Page size cap for psi-coordinator searches.")
    small_cell_min: int = Field(
        5, ge=0, description="The aggregator's counts below this are suppressed (Bundle.total masked); 0: never."
    )
    export_retention_hours: int = Field(
        24, gt=0, description="Bulk Data export files are deleted this long after their export completed."
    )
    export_chunk: int = Field(1000, gt=0, le=10_000, description="Resources an export job writes per step.")
    export_file_resources: int = Field(
        100_000, gt=0, description="About this many resources per Bulk Data output file (then the next part)."
    )
    export_runner: bool = Field(
        True, description="This worker runs export jobs (false: it only answers kick-offs, polls and downloads)."
    )
    export_poll_seconds: float = Field(2.0, gt=0, description="How often each worker looks for export jobs to run.")
    audit: bool = Field(True, description="Write an AuditEvent for every FHIR request (fail closed).")
    audit_index_lag: int = Field(
        2000,
        ge=0,
        description="AuditEvents are chained as requests answer and indexed for search when the node is idle; "
        "past this many waiting, the audit writer indexes as it goes.",
    )
    audit_follower: bool = Field(
        False,
        description="Another process chains the workers' AuditEvent journals (SQLite): `fhir-node audit follow`, "
        "which `fhir-node serve` starts and sets this for its workers.",
    )
    audit_retention_days: int = Field(
        3653, gt=0, description="AuditEvents older than this are removed by `fhir-node audit purge`."
    )
    inclusion_retention_years: int = Field(
        10, gt=0, description="`fhir-node retention` removes inclusions excluded more than this many years ago."
    )
    enforce_profiles: bool = True
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0)
    max_bundle_entries: int = Field(10_000, gt=0, description="Entries a posted transaction or batch may hold.")
    base_url: str | None = Field(
        None, description="Public base of the FHIR API (e.g. https://node.example.be/fhir); default: from the request."
    )
    default_count: int = Field(20, gt=0)
    max_count: int = Field(1000, gt=0)
    auto_migrate: bool = Field(True, description="Apply database migrations when the node starts.")
    log_level: str = "INFO"
    allowed_hosts: str | None = Field(
        None,
        description="Comma-separated host names the node answers to besides loopback ones and FHIR_NODE_BASE_URL's "
        "host; any other Host header is a 400 (DNS rebinding, forged links).",
    )
    max_header_bytes: int = Field(64 * 1024, gt=0, description="Request line and headers larger than this: 431.")
    header_timeout_seconds: float = Field(10, gt=0, description="A request's head must arrive within this time.")
    body_timeout_seconds: float = Field(60, gt=0, description="A request's body must arrive within this time: 408.")
    max_json_depth: int = Field(64, gt=0, description="JSON bodies nested deeper than this are refused (400).")
    statement_timeout_seconds: float = Field(
        30, gt=0, description="A database statement running longer is cancelled; the request answers 400 too-costly."
    )
    write_wait_seconds: float = Field(
        120, gt=0, description="How long a write waits for the write lock (held by other writers) before a 503."
    )
    search_max_repeats: int = Field(10, gt=0, description="Times one search parameter may repeat (AND).")
    search_max_values: int = Field(100, gt=0, description="Values one search parameter may list (OR).")
    search_max_criteria: int = Field(40, gt=0, description="Filters one search may hold, chains and _has included.")
    search_max_chain_depth: int = Field(3, gt=0, description="Links in one chain (`subject.organization.name`: 2).")
    search_max_has_depth: int = Field(2, gt=0, description="`_has` nested in `_has`.")
    search_max_iterate: int = Field(3, gt=0, description="`_include:iterate` / `_revinclude:iterate` rounds.")

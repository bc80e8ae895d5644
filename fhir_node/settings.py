"""One Settings object for the whole node, read from `FHIR_NODE_*` environment variables (and CLI flags)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything an operator can set; each field is `FHIR_NODE_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="FHIR_NODE_", extra="ignore")

    database_url: str = "sqlite:///./data/fhir-node.db"
    auth: Literal["none"] = Field(
        "none", description="`none`: every request acts as the node operator; only served on loopback."
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

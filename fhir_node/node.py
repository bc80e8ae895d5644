"""The running node's shared parts, built once per process from Settings."""

from __future__ import annotations

from dataclasses import dataclass

from fhir_node.conformance.published import synchronise
from fhir_node.settings import Settings
from fhir_node.store.database import Database


@dataclass
class Node:
    """What every interaction needs: the settings and the database (registries join later)."""

    settings: Settings
    db: Database

    @classmethod
    def from_settings(cls, settings: Settings) -> Node:
        db = Database(settings.database_url, settings.statement_timeout_seconds, settings.write_wait_seconds)
        node = cls(settings, db)
        if settings.auto_migrate:
            node.migrate()
        return node

    def migrate(self) -> None:
        """The schema at its newest revision, then our published guide synchronised into the store."""
        self.db.migrate()
        synchronise(self.db)

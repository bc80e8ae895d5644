"""The running node's shared parts, built once per process from Settings."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from fhir_node.audit.trail import Writer
from fhir_node.conformance.published import synchronise
from fhir_node.search.limits import Limits
from fhir_node.security import keyring
from fhir_node.settings import Settings
from fhir_node.store.database import Database
from fhir_node.store.pseudonyms import check_keys


@dataclass
class Node:
    """What every interaction needs: the settings and the database (registries join later)."""

    settings: Settings
    db: Database

    @classmethod
    def from_settings(cls, settings: Settings) -> Node:
        """The node, its SSIN pseudonym keys loaded (`keyring.KeyProblem` when they are missing, or when the
        store holds pseudonyms of keys the file lacks, or SSINs in clear)."""
        ring = keyring.keyring_for(settings)
        keyring.install(ring)
        db = Database(settings.database_url, settings.statement_timeout_seconds, settings.write_wait_seconds)
        node = cls(settings, db)
        if settings.auto_migrate:  # the start of a node (`serve` migrates once before its workers start)
            node.migrate()
            check_keys(node.db, ring)
        return node

    @cached_property
    def audit_writer(self) -> Writer:
        """This process's audit writer (`audit.trail`): the one request path hands it every AuditEvent, and the
        app closes it when it stops."""
        return Writer(self.db, self.settings.audit_index_lag, followed=self.settings.audit_follower)

    @cached_property
    def limits(self) -> Limits:
        """The bounds on one search's work (FHIR_NODE_SEARCH_MAX_*): settings do not change while it runs."""
        return Limits.of(self.settings)

    def migrate(self) -> None:
        """The schema at its newest revision, then our published guide synchronised into the store."""
        self.db.migrate()
        synchronise(self.db)

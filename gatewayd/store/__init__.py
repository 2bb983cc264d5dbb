"""All of gatewayd's SQL, behind the project's own types and exceptions.

- :mod:`gatewayd.store.db` — the connection pool used from Trio (:func:`open_database`,
  :class:`Database`) and :func:`map_exceptions`, the edge where psycopg errors become
  :class:`~gatewayd.errors.StoreError` and its subclasses.
- :mod:`gatewayd.store.migrations` — numbered SQL migrations under an advisory lock.
- :mod:`gatewayd.store.embedded` — the PostgreSQL the daemon runs itself when no
  ``database.url`` is configured.

One module per aggregate (agents, users and keys, messages, ...) builds on
:meth:`Database.run`: it passes a plain function that receives a connection in a
worker thread and returns model objects, never cursors.
"""

from gatewayd.store.db import Database, DatabaseStatistics, map_exceptions, open_database
from gatewayd.store.embedded import EmbeddedPostgres, open_embedded_postgres
from gatewayd.store.migrations import (
    Migration,
    MigrationStatus,
    migrate_down,
    migrate_up,
    migration_status,
)

__all__ = [
    "Database",
    "DatabaseStatistics",
    "EmbeddedPostgres",
    "Migration",
    "MigrationStatus",
    "map_exceptions",
    "migrate_down",
    "migrate_up",
    "migration_status",
    "open_database",
    "open_embedded_postgres",
]

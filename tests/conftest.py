"""Fixtures shared by the whole suite.

PostgreSQL is real: one embedded server (gatewayd's own ``EmbeddedPostgres``) runs for
the whole session, and every test that asks for it gets a fresh, empty database of
its own, so tests never see each other's rows and need no cleanup.

- ``pg_server`` (session, sync): the running :class:`EmbeddedPostgres`.
- ``pg_dsn`` (function, sync): the DSN of a new empty database, dropped afterwards.
- ``database`` (function, async): an open :class:`Database` on ``pg_dsn`` with every
  migration applied.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from gatewayd.store.db import Database, open_database
from gatewayd.store.embedded import EmbeddedPostgres
from gatewayd.store.migrations import migrate_up


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """One embedded PostgreSQL for the session; yields the started server."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """Yields the DSN of a new empty database; drops it after the test."""
    name = f"test_{uuid.uuid4().hex}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    # Same URL form as the server's DSN, with another database name.
    yield urlsplit(pg_server.dsn)._replace(path=f"/{name}").geturl()
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        # FORCE terminates what a test left connected (e.g. an abandoned thread).
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
async def database(pg_dsn: str) -> AsyncIterator[Database]:
    """Yields an open Database on ``pg_dsn`` with all migrations applied."""
    async with open_database(pg_dsn, max_size=4) as db:
        await migrate_up(db)
        yield db


# The gateway itself, started in-process as production starts it.
pytest_plugins = ["tests.gateway_fixtures"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test item (``item.report_call``), so a fixture's
    teardown can tell whether the test failed (the browser tests then save a screenshot)."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report

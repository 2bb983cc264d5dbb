"""Database outages: the supervised embedded server comes back by itself, and the pool's
circuit breaker fails calls fast while the server is gone and recovers when it returns.

Each test runs its own server in tmp_path: they kill and stop servers.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import psycopg
import pytest
import structlog
import trio

from gatewayd.errors import StoreUnavailable
from gatewayd.store.db import UNAVAILABLE, Connection, Database, open_database
from gatewayd.store.embedded import EmbeddedPostgres, open_embedded_postgres


def _create(conn: Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS notes (v int)")


def _insert(conn: Connection, value: int) -> None:
    conn.execute("INSERT INTO notes VALUES (%s)", (value,))


def _values(conn: Connection) -> list[int]:
    return [row[0] for row in conn.execute("SELECT v FROM notes ORDER BY v")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _logged(logs: list[dict[str, object]], event: str) -> None:
    """Wait until ``event`` was logged (from a worker thread: there is nothing to await)."""
    with trio.fail_after(10):
        while True:
            if any(e["event"] == event for e in logs):
                return
            await trio.sleep(0.02)


async def _until_refused(db: Database) -> StoreUnavailable:
    """Call the database until a call fails (backends of a killed server linger briefly)."""
    with trio.fail_after(10):
        while True:
            try:
                await db.run(_values)
            except StoreUnavailable as exc:
                return exc
            await trio.sleep(0.01)


async def test_a_killed_postmaster_is_restarted_and_the_database_recovers(tmp_path: Path) -> None:
    """kill -9 of the supervised server: calls fail fast, it is restarted on its port, wait_available returns."""
    conf = tmp_path / "pg" / "postgresql.conf"
    with structlog.testing.capture_logs() as logs:
        async with (
            open_embedded_postgres(tmp_path) as server,
            open_database(server.dsn, max_size=2, connect_timeout=30) as db,
        ):
            await db.run(_create)
            await db.run(_insert, 1)
            killed, port = server.pid, server.port
            assert killed is not None
            # Without its configuration file no restart can succeed: the outage lasts
            # until the test puts it back, whatever the timing.
            conf.rename(conf.with_suffix(".away"))
            os.kill(killed, signal.SIGKILL)
            first = await _until_refused(db)
            assert first.message == UNAVAILABLE
            assert not db.available
            with pytest.raises(StoreUnavailable) as refused:
                await db.run(_insert, 2)
            assert refused.value.__cause__ is None  # the breaker answered, not the pool
            assert not await db.ping(5.0)
            await _logged(logs, "gatewayd.db.embedded.restart_failed")
            conf.with_suffix(".away").rename(conf)
            with trio.fail_after(30):
                await db.wait_available()
            await db.run(_insert, 3)
            assert await db.run(_values) == [1, 3]
            assert server.running and server.pid != killed and server.port == port
    events = [e["event"] for e in logs]
    assert events.count("gatewayd.db.embedded.died") == 1
    assert events.count("gatewayd.db.embedded.restarted") == 1
    assert "gatewayd.db.down" in events and "gatewayd.db.up" in events


async def test_the_breaker_fails_fast_while_the_server_is_stopped_and_closes_when_it_is_back(
    tmp_path: Path,
) -> None:
    """A stopped server fails calls without waiting out the pool; after wait_available they work."""
    server = EmbeddedPostgres(tmp_path, port=_free_port())
    dsn = await trio.to_thread.run_sync(server.start)
    try:
        async with open_database(dsn, max_size=2, connect_timeout=60) as db:
            await db.wait_available()  # returns at once while up
            await db.run(_create)
            await trio.to_thread.run_sync(server.stop)

            # A guard, not a measurement: the pool alone would wait 60 s for a connection.
            with trio.fail_after(10), pytest.raises(StoreUnavailable) as first:
                await db.run(_insert, 1)
            assert first.value.message == UNAVAILABLE
            assert isinstance(first.value.__cause__, psycopg.OperationalError)
            assert not db.available
            with pytest.raises(StoreUnavailable) as refused:
                await db.run_autocommit(_values)
            assert refused.value.__cause__ is None

            waiter_done = trio.Event()

            async def waiter() -> None:
                await db.wait_available()
                waiter_done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.to_thread.run_sync(server.start)
                with trio.fail_after(10):
                    await waiter_done.wait()
            assert db.available
            await db.run(_insert, 2)
            assert await db.run(_values) == [2]
            assert await db.ping(5.0)
    finally:
        await trio.to_thread.run_sync(server.stop)


async def test_a_query_error_that_is_no_outage_leaves_the_breaker_closed(
    database: Database,
) -> None:
    """A statement timeout maps to StoreUnavailable but does not mark the database down."""

    def slow(conn: Connection) -> None:
        conn.execute("SET LOCAL statement_timeout = 1")
        conn.execute("SELECT pg_sleep(1)")

    with pytest.raises(StoreUnavailable) as info:
        await database.run(slow)
    assert isinstance(info.value.__cause__, psycopg.errors.QueryCanceled)
    assert info.value.message == UNAVAILABLE and "statement timeout" not in str(info.value)
    assert database.available
    assert await database.run(lambda conn: conn.execute("SELECT 1").fetchone()) == (1,)


async def test_statements_from_the_trio_thread_trip_the_breaker_and_recover(
    tmp_path: Path,
) -> None:
    """``execute`` (no worker thread) fails with StoreUnavailable once the server is gone,
    opening the breaker; once it is back, statements run on new connections."""
    server = EmbeddedPostgres(tmp_path, port=_free_port())
    dsn = await trio.to_thread.run_sync(server.start)
    try:
        async with open_database(dsn, max_size=3, connect_timeout=60) as db:
            await db.run(_create)
            await db.execute("INSERT INTO notes VALUES (%s)", (1,))
            await trio.to_thread.run_sync(server.stop)
            with trio.fail_after(10), pytest.raises(StoreUnavailable) as first:
                await db.execute("INSERT INTO notes VALUES (%s)", (2,))
            assert isinstance(first.value.__cause__, psycopg.OperationalError)
            assert not db.available
            with pytest.raises(StoreUnavailable) as refused:
                await db.execute("SELECT 1")
            assert refused.value.__cause__ is None
            await trio.to_thread.run_sync(server.start)
            with trio.fail_after(10):
                await db.wait_available()
            await db.execute("INSERT INTO notes VALUES (%s)", (3,))
            assert await db.run(_values) == [1, 3]
    finally:
        await trio.to_thread.run_sync(server.stop)

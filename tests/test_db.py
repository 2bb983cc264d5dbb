"""The Trio-facing pool: transactions, error mapping, health checks."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psycopg
import pytest
import structlog
import trio

from gatewayd.errors import Conflict, StoreError, StoreUnavailable
from gatewayd.store.db import Connection, Database, map_exceptions, open_database
from gatewayd.store.embedded import EmbeddedPostgres


def _insert_user(conn: Connection, user_id: str) -> None:
    conn.execute("INSERT INTO users (id) VALUES (%s)", (user_id,))


def _user_ids(conn: Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT id FROM users ORDER BY id")]


def _insert_agent(conn: Connection, agent_id: str, name: str) -> None:
    conn.execute(
        "INSERT INTO agents (agent_id, name, user_id, api_key) VALUES (%s, %s, 'u1', 'k')",
        (agent_id, name),
    )


async def test_run_commits_and_returns_the_result(database: Database) -> None:
    """A function that returns is committed and its result handed back."""
    await database.run(_insert_user, "u1")
    assert await database.run(_user_ids) == ["u1"]


async def test_run_rolls_back_when_the_function_raises(database: Database) -> None:
    """A function that raises leaves nothing behind; its own exception passes through."""

    def insert_then_fail(conn: Connection) -> None:
        _insert_user(conn, "ghost")
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await database.run(insert_then_fail)
    assert await database.run(_user_ids) == []


async def test_unique_violation_maps_to_conflict(database: Database) -> None:
    """A broken uniqueness rule surfaces as Conflict naming the constraint."""
    await database.run(_insert_agent, "bot-1", "bot")
    with pytest.raises(Conflict) as info:
        await database.run(_insert_agent, "bot-1", "other")
    assert isinstance(info.value.__cause__, psycopg.errors.UniqueViolation)
    assert info.value.details == {
        "sqlstate": "23505",
        "constraint": "agents_agent_id_key",
        "table": "agents",
    }
    assert info.value.message == "the change conflicts with existing data"


async def test_other_database_errors_map_to_store_error(database: Database) -> None:
    """SQL errors that are neither conflicts nor outages become a StoreError in our words."""

    def broken(conn: Connection) -> None:
        conn.execute("SELEC 1")

    with structlog.testing.capture_logs() as logs, pytest.raises(StoreError) as info:
        await database.run(broken)
    assert type(info.value) is StoreError
    assert isinstance(info.value.__cause__, psycopg.errors.SyntaxError)
    assert info.value.message == "the database could not complete the operation"
    assert info.value.details == {"sqlstate": "42601", "constraint": None, "table": None}
    # PostgreSQL's wording goes to the log and the traceback (a note) only.
    assert [e["error"] for e in logs if e["event"] == "gatewayd.db.failed"] == [
        'syntax error at or near "SELEC"'
    ]
    assert info.value.__notes__ == ['PostgreSQL: syntax error at or near "SELEC"']


def test_map_exceptions_maps_connection_failures_to_unavailable() -> None:
    """A failed connection attempt maps to StoreUnavailable, chained to the cause."""
    with pytest.raises(StoreUnavailable) as info, map_exceptions():
        psycopg.connect("host=127.0.0.1 port=1 user=x dbname=x connect_timeout=2")
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    assert info.value.message == "the database is unavailable" and info.value.details is None


async def test_run_autocommit_leaves_no_autocommit_behind(pg_dsn: str) -> None:
    """A connection used in autocommit mode goes back to the pool transactional."""
    async with open_database(pg_dsn, max_size=1) as db:
        assert await db.run_autocommit(lambda conn: conn.autocommit) is True
        assert await db.run(lambda conn: conn.autocommit) is False


async def test_threads_are_bounded_by_the_pool_size(pg_dsn: str) -> None:
    """Many concurrent calls all complete while at most max_size threads use the pool."""
    peak = 0

    async with open_database(pg_dsn, max_size=2) as db:

        def sleepy(conn: Connection, i: int) -> int:
            nonlocal peak
            peak = max(peak, db.limiter.borrowed_tokens)
            conn.execute("SELECT pg_sleep(0.02)")
            return i

        results: list[int] = []

        async def one(i: int) -> None:
            results.append(await db.run(sleepy, i))

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(one, i)
        assert sorted(results) == list(range(10))
        assert peak == 2
        assert db.statistics().threads_max == 2
        assert "password" not in repr(db) and db.dsn == pg_dsn


async def test_ping_gives_up_on_a_hung_backend(pg_dsn: str) -> None:
    """ping answers False within its timeout when the database stops responding."""
    async with open_database(pg_dsn, min_size=1, max_size=1) as db:
        assert await db.ping(5.0)
        backend = await db.run(lambda conn: conn.info.backend_pid)
        os.kill(backend, signal.SIGSTOP)
        try:
            start = trio.current_time()
            assert not await db.ping(0.3)
            assert trio.current_time() - start < 1.0
        finally:
            os.kill(backend, signal.SIGCONT)
        # The abandoned thread finishes once the backend runs again, freeing the only
        # thread slot for the next ping.
        with trio.fail_after(5):
            assert await db.ping(4.0)


async def test_a_stopped_server_means_false_pings_and_fast_open_failures(
    tmp_path: Path,
) -> None:
    """With the server stopped, ping is False and open_database fails within its timeout."""
    server = EmbeddedPostgres(tmp_path)
    dsn = await trio.to_thread.run_sync(server.start)
    try:
        async with open_database(dsn, max_size=2, connect_timeout=1.0) as db:
            assert await db.ping(2.0)
            await trio.to_thread.run_sync(server.stop)
            start = trio.current_time()
            assert not await db.ping(1.0)
            assert trio.current_time() - start < 1.5
    finally:
        await trio.to_thread.run_sync(server.stop)

    start = trio.current_time()
    with pytest.raises(StoreUnavailable):
        async with open_database(dsn, connect_timeout=1.0):
            pass  # pragma: no cover
    assert trio.current_time() - start < 3.0


# ------------------------------------------------------------------ statements on the Trio thread


async def _wait_for_lock_wait(db: Database) -> None:
    """Until some session of this database waits for a lock."""
    while not await db.run(
        lambda conn: conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database()"
        ).fetchone()
    ):
        await trio.sleep(0.01)


async def test_execute_runs_a_statement_from_the_trio_thread(database: Database) -> None:
    """One statement, committed on its own: its rows and row count come back; no worker
    thread is used (the pool's threads stay idle); its errors map as run's do, and the
    connection serves the next statement."""
    threads = []
    real = trio.to_thread.run_sync

    async def counted(*args: object, **kwargs: object) -> object:
        threads.append(args[0])
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    result = await database.execute("SELECT 1")  # connects (in a worker thread) once
    trio.to_thread.run_sync = counted  # type: ignore[assignment]
    try:
        result = await database.execute(
            "INSERT INTO users (id) VALUES (%s), (%s) RETURNING id", ("u1", "u2")
        )
        assert result.rows == [("u1",), ("u2",)] and result.rowcount == 2
        result = await database.execute("UPDATE users SET id = id WHERE id = %(id)s", {"id": "u9"})
        assert result.rows == [] and result.rowcount == 0
        with pytest.raises(Conflict) as info:
            await database.execute("INSERT INTO users (id) VALUES (%s)", ("u1",))
        assert isinstance(info.value.__cause__, psycopg.errors.UniqueViolation)
        assert (await database.execute("SELECT count(*) FROM users")).rows == [(2,)]
    finally:
        trio.to_thread.run_sync = real
    assert threads == []
    assert await database.run(_user_ids) == ["u1", "u2"]  # committed, seen by the pool


async def test_a_cancelled_statement_still_completes_and_its_connection_serves_on(
    database: Database,
) -> None:
    """Cancelling the caller of a statement the server is running waits for its answer (it
    is never abandoned halfway): the caller gets it, the cancellation comes at its next
    checkpoint, and the connection serves the next statement."""
    await database.run(_insert_user, "u1")
    holder = await trio.to_thread.run_sync(psycopg.connect, database.dsn)
    try:
        await trio.to_thread.run_sync(
            lambda: holder.execute("SELECT 1 FROM users WHERE id = 'u1' FOR UPDATE")
        )
        changed, cancelled = -1, False

        async def rename(*, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
            nonlocal changed, cancelled
            with trio.CancelScope() as scope:
                task_status.started(scope)
                result = await database.execute("UPDATE users SET id = 'u2' WHERE id = 'u1'")
                changed = result.rowcount
                try:
                    await trio.lowlevel.checkpoint()
                except trio.Cancelled:
                    cancelled = True
                    raise

        async with trio.open_nursery() as nursery:
            scope = await nursery.start(rename)
            await _wait_for_lock_wait(database)
            scope.cancel()
            await trio.to_thread.run_sync(holder.rollback)
        assert changed == 1 and cancelled
    finally:
        holder.close()
    assert await database.run(_user_ids) == ["u2"]
    assert (await database.execute("SELECT count(*) FROM users")).rows == [(1,)]


async def test_a_session_the_server_ended_is_replaced(database: Database) -> None:
    """A connection whose session was terminated (a restart, pg_terminate_backend) is not
    lent again: the next statement runs on a new one."""
    [(pid,)] = (await database.execute("SELECT pg_backend_pid()")).rows
    await database.run(lambda conn: conn.execute("SELECT pg_terminate_backend(%s)", (pid,)))
    while await database.run(
        lambda conn: conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
    ):
        await trio.sleep(0.01)  # until the session is gone
    [(new_pid,)] = (await database.execute("SELECT pg_backend_pid()")).rows
    assert new_pid != pid
    assert database.available

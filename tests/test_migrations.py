"""Migrations: discovery, reversibility, bookkeeping and mutual exclusion."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from gatewayd.errors import Conflict, StoreError
from gatewayd.store.db import Connection, Database, open_database
from gatewayd.store.migrations import (
    LOCK_KEY,
    MIGRATIONS_TABLE,
    Migration,
    discover_migrations,
    migrate_down,
    migrate_up,
    migration_status,
)

# The catalog, as far as a migration can change it. The migrations table itself is
# left out: it is the migrator's bookkeeping, created once and kept.
_SNAPSHOT_QUERIES = {
    "relations": """
        SELECT c.relname, c.relkind::text FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relname NOT LIKE %(table)s || '%%'
        ORDER BY 1""",
    "columns": """
        SELECT table_name, column_name, data_type, udt_name, is_nullable, column_default
        FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name <> %(table)s
        ORDER BY table_name, ordinal_position""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' AND tablename <> %(table)s ORDER BY 1, 2""",
    "constraints": """
        SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname = 'public' AND c.conrelid::regclass::text <> %(table)s
        ORDER BY 1, 2""",
    "types": """
        SELECT t.typname, t.typtype::text FROM pg_type t
        JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = 'public' AND t.typrelid = 0 AND t.typelem = 0 ORDER BY 1""",
    "functions": """
        SELECT p.oid::regprocedure::text FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public' ORDER BY 1""",
    "triggers": "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1",
    "extensions": "SELECT extname FROM pg_extension ORDER BY 1",
}


def _snapshot(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        name: conn.execute(query, {"table": MIGRATIONS_TABLE}).fetchall()
        for name, query in _SNAPSHOT_QUERIES.items()
    }


def _scalar(conn: Connection, query: str) -> Any:
    row = conn.execute(query.encode()).fetchone()
    return None if row is None else row[0]


def _regclass(conn: Connection, name: str) -> Any:
    return _scalar(conn, f"SELECT to_regclass('{name}')")


def _write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def _fake_migrations(tmp_path: Path, *ups: str) -> list[Migration]:
    files = {}
    for i, up in enumerate(ups, start=1):
        files[f"{i:03d}_step{i}.up.sql"] = up
        files[f"{i:03d}_step{i}.down.sql"] = f"DROP TABLE t{i};"
    return discover_migrations(_write(tmp_path / "sql", files))


def test_discovers_the_packaged_migrations() -> None:
    """The shipped sql/ directory yields complete, numbered migrations starting at 001_init."""
    migrations = discover_migrations()
    assert migrations[0].version == 1 and migrations[0].name == "init"
    assert all(m.up_sql.strip() and m.down_sql.strip() for m in migrations)


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ({"001_a.up.sql": ""}, "001_a has no .down.sql"),
        ({"001_a.down.sql": ""}, "001_a has no .up.sql"),
        (
            {"001_a.up.sql": "", "001_a.down.sql": "", "001_b.up.sql": "", "001_b.down.sql": ""},
            "used twice",
        ),
        ({"002_a.up.sql": "", "002_a.down.sql": ""}, "without gaps"),
        ({"1_a.up.sql": "", "1_a.down.sql": ""}, "is not named"),
        ({"README.md": ""}, "no migrations found"),
    ],
)
def test_rejects_a_broken_migration_set(tmp_path: Path, files: dict[str, str], error: str) -> None:
    """Incomplete pairs, reused or missing numbers and odd file names are refused."""
    with pytest.raises(StoreError, match=error):
        discover_migrations(_write(tmp_path / "sql", files))


async def test_up_down_up_leaves_the_same_schema(pg_dsn: str) -> None:
    """Down restores the empty catalog exactly, and up again rebuilds the same schema."""
    async with open_database(pg_dsn) as db:
        empty = await db.run(_snapshot)
        applied = await migrate_up(db)
        assert [m.version for m in applied] == [m.version for m in discover_migrations()]
        migrated = await db.run(_snapshot)
        tables = {name for name, kind in migrated["relations"] if kind == "r"}
        assert tables == {
            "users",
            "api_keys",
            "agents",
            "messages",
            "ai_executions",
            "revoked_tokens",
            "webhook_deliveries",
            "webhook_attempts",
            "agent_status_history",
            "analytics_hourly",
        }

        reverted = await migrate_down(db, steps=len(applied))
        assert reverted == applied[::-1]
        assert await db.run(_snapshot) == empty

        await migrate_up(db)
        assert await db.run(_snapshot) == migrated


async def test_status_follows_up_and_down(pg_dsn: str) -> None:
    """Status lists every migration as pending, then applied with a time, then pending."""
    async with open_database(pg_dsn) as db:
        before = await migration_status(db)
        shipped = [(m.version, m.name) for m in discover_migrations()]
        assert [(s.version, s.name, s.applied_at) for s in before] == [
            (v, n, None) for v, n in shipped
        ]
        assert shipped[0] == (1, "init")
        # Asking for the status writes nothing, not even the bookkeeping table.
        assert await db.run(_regclass, MIGRATIONS_TABLE) is None

        await migrate_up(db)
        after = await migration_status(db)
        assert all(s.applied and s.applied_at is not None for s in after)
        assert await migrate_up(db) == []  # nothing left to do

        await migrate_down(db)
        status = await migration_status(db)
        assert not status[-1].applied and all(s.applied for s in status[:-1])


async def test_target_and_steps_bound_the_run(pg_dsn: str, tmp_path: Path) -> None:
    """migrate_up stops at its target; migrate_down reverts at most what is applied."""
    fake = _fake_migrations(tmp_path, "CREATE TABLE t1 ();", "CREATE TABLE t2 ();")
    async with open_database(pg_dsn) as db:
        assert [m.version for m in await migrate_up(db, 1, migrations=fake)] == [1]
        assert [m.version for m in await migrate_up(db, migrations=fake)] == [2]
        assert [m.version for m in await migrate_down(db, 5, migrations=fake)] == [2, 1]
        assert await migrate_down(db, migrations=fake) == []


async def test_a_failed_migration_leaves_no_trace(pg_dsn: str, tmp_path: Path) -> None:
    """A failing migration rolls back with its record; earlier ones stay; the lock is freed."""
    fake = _fake_migrations(
        tmp_path, "CREATE TABLE t1 ();", "CREATE TABLE t2 (); SELECT no_such_function();"
    )
    async with open_database(pg_dsn, max_size=1) as db:
        with pytest.raises(StoreError, match="no_such_function"):
            await migrate_up(db, migrations=fake)
        assert [s.applied for s in await migration_status(db, migrations=fake)] == [True, False]
        assert await db.run(_regclass, "t2") is None
        assert (
            await db.run(_scalar, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
        )


async def test_refuses_a_schema_newer_than_the_code(pg_dsn: str, tmp_path: Path) -> None:
    """A database migrated by a newer gatewayd is not touched by an older one."""
    fake = _fake_migrations(tmp_path, "CREATE TABLE t1 ();", "CREATE TABLE t2 ();")
    async with open_database(pg_dsn) as db:
        await migrate_up(db, migrations=fake)
        with pytest.raises(StoreError, match="newer"):
            await migrate_up(db, migrations=fake[:1])
        statuses = await migration_status(db, migrations=fake[:1])
        assert [(s.version, s.name, s.applied) for s in statuses] == [
            (1, "step1", True),
            (2, "step2", True),
        ]


async def test_concurrent_runs_apply_each_migration_once(pg_dsn: str, tmp_path: Path) -> None:
    """Two pools migrating one database at once serialise on the advisory lock."""
    fake = _fake_migrations(
        tmp_path,
        # Slow enough that the second run arrives while the first holds the lock.
        "SELECT pg_sleep(0.3); CREATE TABLE t1 (n int); INSERT INTO t1 VALUES (1);",
        "CREATE TABLE t2 ();",
    )
    results: list[list[int]] = []

    async def migrate(db: Database) -> None:
        results.append([m.version for m in await migrate_up(db, migrations=fake)])

    async with open_database(pg_dsn) as one, open_database(pg_dsn) as two:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(migrate, one)
            nursery.start_soon(migrate, two)
        assert sorted(results) == [[], [1, 2]]
        assert await one.run(_scalar, "SELECT count(*) FROM t1") == 1
        assert await one.run(_scalar, f"SELECT array_agg(version) FROM {MIGRATIONS_TABLE}") == [
            1,
            2,
        ]


async def test_waiting_for_the_lock_can_be_cancelled(pg_dsn: str) -> None:
    """A run blocked behind another migrator gives up when cancelled, having changed nothing."""
    acquired, release = threading.Event(), threading.Event()

    def hold_lock(conn: Connection) -> None:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        acquired.set()
        release.wait(10)
        conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))

    async with open_database(pg_dsn) as holder, open_database(pg_dsn) as db:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder.run_autocommit, hold_lock)
            await trio.to_thread.run_sync(acquired.wait)
            with trio.move_on_after(0.3) as scope:
                await migrate_up(db)
            assert scope.cancelled_caught
            release.set()
        assert not (await migration_status(db))[0].applied
        assert [m.version for m in await migrate_up(db)] == [
            m.version for m in discover_migrations()
        ]


async def test_the_schema_enforces_its_rules(database: Database) -> None:
    """Agents, messages and executions keep their invariants (uniqueness, checks, cascades)."""

    def setup(conn: Connection) -> Any:
        row = conn.execute(
            "INSERT INTO agents (agent_id, name, user_id, api_key) "
            "VALUES ('a1', 'bot', '123', 'k') RETURNING id, status"
        ).fetchone()
        assert row is not None
        return row

    agent, status = await database.run(setup)
    assert status == "awaiting_qr"

    def store_inbound(conn: Connection, wa_id: str | None) -> int:
        # The form the store will use: a redelivery inserts nothing.
        cur = conn.execute(
            "INSERT INTO messages (agent_id, direction, chat_jid, wa_message_id) "
            "VALUES (%s, 'inbound', '6281@s.whatsapp.net', %s) "
            "ON CONFLICT (agent_id, direction, wa_message_id) DO NOTHING",
            (agent, wa_id),
        )
        return cur.rowcount

    assert await database.run(store_inbound, "WA1") == 1
    assert await database.run(store_inbound, "WA1") == 0
    assert await database.run(store_inbound, None) == 1
    assert await database.run(store_inbound, None) == 1  # NULL ids never collide

    with pytest.raises(Conflict, match="agents_status_check"):
        await database.run(lambda c: c.execute("UPDATE agents SET status = 'qr'"))
    with pytest.raises(Conflict, match="agents_agent_id_key"):
        await database.run(
            _scalar,
            "INSERT INTO agents (agent_id, name, user_id, api_key) "
            "VALUES ('a1', 'other', '123', 'k') RETURNING id",
        )

    def execution_survives_message(conn: Connection) -> Any:
        conn.execute(
            "INSERT INTO ai_executions (agent_id, message_id, status, duration_ms) "
            "SELECT %s, min(id), 'success', 12 FROM messages WHERE wa_message_id IS NULL",
            (agent,),
        )
        conn.execute("DELETE FROM messages WHERE wa_message_id IS NULL")
        return conn.execute("SELECT message_id FROM ai_executions").fetchall()

    assert await database.run(execution_survives_message) == [(None,)]

    def cascade(conn: Connection) -> Any:
        conn.execute("DELETE FROM agents")
        return conn.execute(
            "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM ai_executions)"
        ).fetchone()

    assert await database.run(cascade) == (0, 0)

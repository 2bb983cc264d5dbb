"""Upgrades keep data: from a database at each earlier schema version, with rows in it, to
the latest.

Each fixture is built by the migrations themselves: gatewayd's own ``migrate_up`` brings an
empty database to version N, then rows are written that are valid at N (with the columns and
values the code of that version wrote; version 1 wrote ``received``/``sent`` statuses, say).
``gatewayd migrate status`` must then name exactly the pending migrations in order, and
``gatewayd migrate up`` apply them; afterwards every row is still there with every value it
had (row counts and the values of every column that existed at N), and what later migrations
derive from them (defaults of new columns, 009's analytics backfill and status history) adds
up to the rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from gatewayd.store import agents as agents_store
from gatewayd.store import analytics as analytics_store
from gatewayd.store import owned
from gatewayd.store.db import open_database
from gatewayd.store.migrations import MIGRATIONS_TABLE, discover_migrations, migrate_up
from tests.daemon import ROOT
from tests.test_cli_migrate import _environ_without_db_overrides

MIGRATIONS = discover_migrations()
LATEST = MIGRATIONS[-1].version
#: The newest version ``seed`` writes rows for. A new migration must add its rows here (and
#: its checks below): the test fails until it does.
SEEDED_UP_TO = 9

T0 = datetime(2026, 11, 30, 8, 15, tzinfo=UTC)  # rows span two UTC hours from here
DEVICE = "628111000001:7@s.whatsapp.net"


def test_every_migration_has_fixture_rows() -> None:
    assert SEEDED_UP_TO == LATEST, "seed() writes no rows valid at the newest migration"


# --------------------------------------------------------------------------- the fixtures


def seed(conn: psycopg.Connection[Any], version: int) -> None:
    """Rows valid at ``version``: what gatewayd of that version wrote (and, for api_keys, the
    deployed setup's other system), with only the columns that existed then."""

    def insert(table: str, **values: object) -> Any:
        query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING *").format(
            sql.Identifier(table),
            sql.SQL(", ").join(map(sql.Identifier, values)),
            sql.SQL(", ").join(sql.Placeholder() * len(values)),
        )
        return conn.cursor(row_factory=dict_row).execute(query, list(values.values())).fetchone()

    v = version

    def since(version_added: int, **values: object) -> dict[str, object]:
        """``values`` for columns that exist at this version."""
        return values if v >= version_added else {}

    insert("users", id="123", created_at=T0)  # a compatibility client's own id, no PIN
    pin_user = {"id": str(uuid.UUID(int=1)), "pin_hash": "a" * 64, "created_at": T0}
    insert("users", **pin_user, **since(5, last_login_at=T0))

    # The other system's plaintext keys, one revoked; from 005 on, a key gatewayd issued.
    insert("api_keys", user_id="123", key="plain-key-1", name="main", created_at=T0)
    insert(
        "api_keys", user_id="123", key="plain-key-0", is_active=False, revoked_at=T0,
        created_at=T0 - timedelta(days=30),
    )  # fmt: skip
    if v >= 5:
        insert(
            "api_keys", user_id=pin_user["id"], key_hash="b" * 64, prefix="gwd_abcdefgh",
            name="ci", last_used_at=T0,
        )  # fmt: skip

    def agent(agent_id: str, status: str, **more: object) -> uuid.UUID:
        row = insert(
            "agents", agent_id=agent_id, name=more.pop("name", agent_id.title()),
            user_id=more.pop("user_id", "123"), api_key="plain-key-1", status=status,
            updated_at=T0, created_at=T0, **more,
        )  # fmt: skip
        return uuid.UUID(str(row["id"]))

    sales = agent(
        "sales", "connected", name="Sales", endpoint_url_run="http://ai.example/run",
        webhook_url="https://hooks.example/in", webhook_secret="whsec_x", phone_number="628111000001",
        lid="100000000000001@lid", device_jid=DEVICE, device_info=Jsonb({"platform": "android"}),
        last_connected_at=T0, **since(7, connected_run=uuid.UUID(int=7)),
        **since(8, webhook_events=["message.received", "session.status"],
                webhook_headers=Jsonb({"X-Auth": "s3cret"})),
    )  # fmt: skip
    agent("support", "disconnected", status_reason="network", last_disconnected_at=T0,
          **since(7, connected_seconds=5400.5))  # fmt: skip
    agent("fresh", "awaiting_qr", user_id=pin_user["id"])
    agent("paused", "stopped")
    if v >= 4:  # statuses 004 allowed
        agent("gone", "logged_out", status_reason="unlinked on the phone")
        agent("blocked", "banned")
    if v >= 6:  # a second agent of a user with the same name (006 dropped the constraint)
        agent("sales-2", "awaiting_qr", name="Sales")

    def message(direction: str, minutes: int, **more: object) -> int:
        created = T0 + timedelta(minutes=minutes)
        at = {"received_at": created} if direction == "inbound" else {"sent_at": created}
        chat = more.pop("chat_jid", "6281234567890@s.whatsapp.net")
        row = insert(
            "messages", agent_id=sales, direction=direction, chat_jid=chat,
            created_at=created, **at, **more,
        )  # fmt: skip
        return int(row["id"])

    # Inbound rows are written unhandled and marked handled afterwards, as every version did
    # (mark_handled): 009 counts a group mention when the outcome is set.
    first = message(
        "inbound", 0, text="hello", wa_message_id="IN1", status="received", push_name="Ani",
        sender_jid="6281234567890@s.whatsapp.net", trace_id="t-1",
        **since(2, payload=Jsonb({"id": "IN1", "text": "hello"}), mentioned_jids=[]),
    )  # fmt: skip
    group = message(
        "inbound", 10, text="@bot price?", is_group=True, chat_jid="120363000000000001@g.us",
        wa_message_id="IN2", status="received", **since(2, mentioned_jids=[DEVICE]),
    )  # fmt: skip
    for row_id in (first, group):
        conn.execute(
            "UPDATE messages SET handled_at = %s, outcome = 'replied' WHERE id = %s", (T0, row_id)
        )
    if v >= 3:  # answered: its reply queued (003's statuses), after one forwarder attempt
        conn.execute(
            "UPDATE messages SET status = 'answered', attempts = 1 WHERE id = %s", (first,)
        )
    message(
        "inbound", 20, type="image", media=Jsonb({"mimetype": "image/jpeg", "size": 1234}),
        wa_message_id="IN3", status="received",
    )  # fmt: skip
    message(
        "outbound", 50, text="re: hello", wa_message_id="OUT1", status="sent", trace_id="t-1",
        **since(3, reply_to=first, result=Jsonb({"messageId": "OUT1"})),
    )  # fmt: skip
    if v >= 3:  # what 003 added: queued replies, idempotent API sends, failures
        message("outbound", 55, text="later", status="queued", reply_to=first)
        message(
            "outbound", 58, text="api send", status="failed", idempotency_key="idem-1",
            error="not connected",
        )  # fmt: skip
    for status, ms, minutes in (("success", 120, 1), ("timeout", 30000, 11), ("error", 5, 52)):
        insert(
            "ai_executions", agent_id=sales, message_id=first, request=Jsonb({"m": "hello"}),
            response=Jsonb({"reply": "re: hello"}) if status == "success" else None,
            duration_ms=ms, status=status, error=None if status == "success" else status,
            created_at=T0 + timedelta(minutes=minutes),
        )  # fmt: skip

    if v >= 5:
        insert(
            "revoked_tokens", jti="jti-1", user_id=pin_user["id"], expires_at=T0 + timedelta(days=1)
        )
    if v >= 8:
        delivery = insert(
            "webhook_deliveries", agent_id=sales, message_id=first, event="message.received",
            payload=json.dumps({"event": "message.received", "session_id": str(sales)}),
            status="delivered", attempts=2, last_status_code=200, created_at=T0,
            delivered_at=T0 + timedelta(minutes=2),
        )  # fmt: skip
        for n, code, ok in ((1, 500, False), (2, 200, True)):
            insert(
                "webhook_attempts", delivery_id=delivery["id"], agent_id=sales, n=n,
                status_code=code, duration_ms=40 * n, success=ok, at=T0 + timedelta(minutes=n),
            )  # fmt: skip
    # Nothing of 009's: its rollups and status history are derived (checked below).


# --------------------------------------------------------------------------- reading back


def snapshot(dsn: str, columns: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Every row of every table (but the migrations' own), with the columns of ``columns``
    (default: those there are now); and the columns used, to read the same after."""
    with psycopg.connect(dsn) as conn:
        if columns is None:
            columns = {}
            for table, column in conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name <> %s"
                " ORDER BY table_name, ordinal_position",
                (MIGRATIONS_TABLE,),
            ):
                columns.setdefault(table, []).append(column)
        rows = {}
        for table, names in columns.items():
            query = sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(map(sql.Identifier, names)), sql.Identifier(table)
            )
            rows[table] = sorted(conn.execute(query).fetchall(), key=repr)
    return {"columns": columns, "rows": rows}


def migrate(dsn: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "gatewayd.toml"
    config.write_text(f'[database]\nurl = "{dsn}"\n\n[log]\nformat = "json"\n')
    result = subprocess.run(
        [sys.executable, "-m", "gatewayd", "migrate", *args, "--config", str(config)],
        capture_output=True, text=True, timeout=120, env=_environ_without_db_overrides(),
        cwd=str(ROOT),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


def one(dsn: str, query: str, *params: object) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query.encode(), params).fetchone()
    assert row is not None
    return row[0] if len(row) == 1 else row


# --------------------------------------------------------------------------- the test


@pytest.mark.parametrize("version", [m.version for m in MIGRATIONS])
async def test_an_upgrade_from_each_version_keeps_every_row(
    version: int, pg_dsn: str, tmp_path: Path
) -> None:
    """From version N (with rows) to the latest: status names what will be applied, in
    order; up applies it; every row and every old value is still there; derived data adds up."""
    async with open_database(pg_dsn, max_size=2) as db:
        assert [m.version for m in await migrate_up(db, target=version)] == list(
            range(1, version + 1)
        )
    with psycopg.connect(pg_dsn) as conn:
        seed(conn, version)
    before = await trio.to_thread.run_sync(snapshot, pg_dsn)
    applied_before = await trio.to_thread.run_sync(
        one,
        pg_dsn,
        f"SELECT array_agg(ROW(version, applied_at)::text ORDER BY version) FROM {MIGRATIONS_TABLE}",
    )

    pending = [m for m in MIGRATIONS if m.version > version]
    status = await trio.to_thread.run_sync(migrate, pg_dsn, tmp_path, "status")
    lines = status.stdout.splitlines()
    named = [line.split(":", 1)[0].strip() for line in lines if line.startswith("  0")]
    assert named == [f"{m.version:03d}_{m.name}" for m in pending], status.stdout
    if pending:
        assert f"schema version {version:03d}, this gatewayd's is {LATEST:03d}" in status.stdout
        assert f"applies {len(pending)} migration" in status.stdout
    else:
        assert f"schema version {version:03d}: up to date" in status.stdout

    up = await trio.to_thread.run_sync(migrate, pg_dsn, tmp_path, "up")
    assert [line for line in up.stdout.splitlines() if line.startswith("applied")] == [
        f"applied {m}" for m in pending
    ]
    assert "up to date" in up.stdout

    # Nothing lost: every table of version N, every row, every column it had, unchanged.
    after = await trio.to_thread.run_sync(snapshot, pg_dsn, before["columns"])
    for table in before["rows"]:
        assert after["rows"][table] == before["rows"][table], table
    assert (
        await trio.to_thread.run_sync(
            one,
            pg_dsn,
            f"SELECT array_agg(ROW(version, applied_at)::text ORDER BY version)"
            f" FROM {MIGRATIONS_TABLE} WHERE version <= %s",
            version,
        )
        == applied_before
    )

    # New columns of old rows hold their defaults.
    if version < 3:
        assert one(pg_dsn, "SELECT array_agg(DISTINCT attempts) FROM messages") == [0]
    if version < 7:
        assert one(pg_dsn, "SELECT array_agg(DISTINCT connected_seconds) FROM agents") == [0]
    if version < 8:
        assert one(
            pg_dsn, "SELECT array_agg(DISTINCT webhook_events::text || webhook_headers::text)"
            " FROM agents"
        ) == ["{message.received}{}"]  # fmt: skip

    # 009's derived data adds up to the rows, however they got there (backfill or triggers).
    rollup = "sum(inbound), sum(outbound), sum(private_messages), sum(group_messages)," \
        " sum(group_mentions), sum(type_text), sum(type_image), sum(ai_ok), sum(ai_failed)," \
        " sum(ai_ms_sum), sum(webhook_ok), sum(webhook_failed), sum(webhook_ms_sum)"  # fmt: skip
    counted = one(pg_dsn, f"SELECT {rollup} FROM analytics_hourly")
    expected = one(
        pg_dsn,
        "SELECT (SELECT count(*) FROM messages WHERE direction = 'inbound'),"
        " (SELECT count(*) FROM messages WHERE direction = 'outbound'),"
        " (SELECT count(*) FROM messages WHERE direction = 'inbound' AND NOT is_group),"
        " (SELECT count(*) FROM messages WHERE direction = 'inbound' AND is_group),"
        " (SELECT count(*) FROM messages WHERE direction = 'inbound' AND is_group"
        "   AND outcome = 'replied'),"
        " (SELECT count(*) FROM messages WHERE direction = 'inbound' AND type = 'text'),"
        " (SELECT count(*) FROM messages WHERE direction = 'inbound' AND type = 'image'),"
        " (SELECT count(*) FROM ai_executions WHERE status = 'success'),"
        " (SELECT count(*) FROM ai_executions WHERE status <> 'success'),"
        " (SELECT sum(duration_ms) FROM ai_executions),"
        " (SELECT count(*) FROM webhook_attempts WHERE success),"
        " (SELECT count(*) FROM webhook_attempts WHERE NOT success),"
        " (SELECT coalesce(sum(duration_ms), 0) FROM webhook_attempts)",
    )
    assert tuple(counted) == tuple(expected)
    assert expected[0] == 3 and expected[1] == (3 if version >= 3 else 1)
    hours = one(pg_dsn, "SELECT array_agg(hour ORDER BY hour) FROM analytics_hourly")
    assert hours == [T0.replace(minute=0), T0.replace(minute=0) + timedelta(hours=1)]
    # Every agent's current status is the newest of its history.
    assert (
        one(
            pg_dsn,
            "SELECT count(*) FROM agents a WHERE a.status IS DISTINCT FROM (SELECT h.status"
            " FROM agent_status_history h WHERE h.agent_id = a.id ORDER BY h.at DESC, h.id DESC"
            " LIMIT 1)",
        )
        == 0
    )

    # Today's code reads the old rows.
    async with open_database(pg_dsn, max_size=2) as db:
        sales = await agents_store.get_agent(db, "sales")
        assert sales is not None and sales.device_jid == DEVICE and sales.status == "connected"
        restorable = {a.agent_id for a in await agents_store.list_restorable(db)}
        assert "sales" in restorable and "paused" not in restorable
        assert {a.agent_id for a in await owned.list_sessions(db, "123")} >= {"sales", "support"}
        totals = await analytics_store.totals(db, sales.id)
        assert (totals.inbound, totals.executions) == (3, 3)

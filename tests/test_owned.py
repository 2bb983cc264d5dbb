"""Sessions as their user owns them (gatewayd/store/owned.py) and uptime bookkeeping
(gatewayd/store/agents.py), against a real PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest

from gatewayd.store import agents as agents_store
from gatewayd.store import executions as executions_store
from gatewayd.store import owned
from gatewayd.store.agents import AgentRecord
from gatewayd.store.db import Connection, Database, open_database

T0 = datetime(2024, 1, 1, tzinfo=UTC)


async def _agent(db: Database, user_id: str, agent_id: str, name: str = "bot") -> AgentRecord:
    return await agents_store.create_agent(
        db, agent_id=agent_id, name=name, user_id=user_id, api_key=f"key-{agent_id}"
    )


async def _sql(db: Database, query: str, *args: Any) -> list[tuple[Any, ...]]:
    def work(conn: Connection) -> list[tuple[Any, ...]]:
        cur = conn.execute(query.encode(), args)
        return cur.fetchall() if cur.description is not None else []

    return await db.run(work)


async def _uptime_row(db: Database, agent: AgentRecord) -> tuple[Any, ...]:
    rows = await _sql(
        db,
        "SELECT connected_seconds, last_connected_at, last_disconnected_at, status"
        " FROM agents WHERE id = %s",
        agent.id,
    )
    return rows[0]


# ---------------------------------------------------------------- tenancy


async def test_another_users_session_is_invisible(database: Database) -> None:
    """User B never sees, finds or changes user A's session through any owned function."""
    mine = await _agent(database, "user-a", "agent-a", "Shared name")
    theirs = await _agent(database, "user-b", "agent-b", "Shared name")

    assert [r.id for r in await owned.list_sessions(database, "user-b")] == [theirs.id]
    assert await owned.get_session(database, "user-b", mine.id) is None
    assert await owned.get_by_agent_id(database, "user-b", "agent-a") is None
    assert await owned.update_session(database, "user-b", mine.id, name="taken") is None
    assert await owned.update_session(database, "user-b", mine.id, webhook_url=None) is None
    # Asking for nothing to change still answers only the owner.
    assert await owned.update_session(database, "user-b", mine.id) is None

    found = await owned.get_session(database, "user-a", mine.id)
    assert found is not None and found.name == "Shared name" and found.webhook_url is None
    assert await owned.get_by_agent_id(database, "user-a", "agent-a") == found
    assert await owned.get_session(database, "user-a", uuid.uuid4()) is None


async def test_sessions_are_listed_newest_first(database: Database) -> None:
    """list_sessions answers the user's sessions from the newest to the oldest."""
    ids = [(await _agent(database, "user-a", f"agent-{i}")).id for i in range(3)]
    for age, agent_uuid in enumerate(ids):
        await _sql(
            database,
            "UPDATE agents SET created_at = %s WHERE id = %s",
            T0 - timedelta(days=age),
            agent_uuid,
        )
    assert [r.id for r in await owned.list_sessions(database, "user-a")] == ids
    assert await owned.list_sessions(database, "nobody") == []


async def test_update_changes_only_the_given_fields(database: Database) -> None:
    """update_session renames, sets or removes the webhook, and leaves UNSET fields alone."""
    agent = await _agent(database, "user-a", "agent-a", "Before")

    renamed = await owned.update_session(database, "user-a", agent.id, name="After")
    assert renamed is not None and (renamed.name, renamed.webhook_url) == ("After", None)
    assert renamed.updated_at >= agent.updated_at

    hooked = await owned.update_session(
        database, "user-a", agent.id, webhook_url="https://hooks.example/in"
    )
    assert hooked is not None and (hooked.name, hooked.webhook_url) == (
        "After",
        "https://hooks.example/in",
    )

    cleared = await owned.update_session(
        database, "user-a", agent.id, name="Final", webhook_url=None
    )
    assert cleared is not None and (cleared.name, cleared.webhook_url) == ("Final", None)
    assert await owned.get_session(database, "user-a", agent.id) == cleared


# ---------------------------------------------------------------- uptime


_AT_80 = T0 + timedelta(seconds=80)


def _record(**changes: Any) -> AgentRecord:
    base = AgentRecord(
        id=uuid.uuid4(),
        agent_id="a",
        name="n",
        user_id="u",
        api_key="k",
        endpoint_url_run=None,
        webhook_url=None,
        status="disconnected",
        status_reason=None,
        last_connected_at=None,
        last_disconnected_at=None,
        phone_number=None,
        lid=None,
        device_jid=None,
        device_info=None,
        created_at=T0,
        updated_at=T0,
    )
    return attrs.evolve(base, **changes)


@pytest.mark.parametrize(
    ("changes", "seconds_later", "expected"),
    [
        ({}, 100, 0.0),
        ({"connected_seconds": 30.0}, 100, 30.0),
        # The running stretch counts while connected...
        ({"connected_seconds": 30.0, "status": "connected", "last_connected_at": _AT_80}, 100, 50.0),
        # ...and not once the record says it ended.
        ({"connected_seconds": 30.0, "status": "disconnected", "last_connected_at": _AT_80}, 100, 30.0),
        ({"connected_seconds": 1.0}, 3, 33.3),
        ({"connected_seconds": 2.0}, 3, 66.7),
        ({"status": "connected", "last_connected_at": T0}, 7200, 100.0),
        # Never above 100, never below 0, nothing for a life of no length.
        ({"connected_seconds": 500.0}, 100, 100.0),
        ({"connected_seconds": 5.0}, 0, 0.0),
        ({"status": "connected", "last_connected_at": T0 + timedelta(seconds=200)}, 100, 0.0),
    ],
)  # fmt: skip
def test_uptime_percentage_arithmetic(
    changes: dict[str, Any], seconds_later: int, expected: float
) -> None:
    """uptime_percentage is the connected share of the life so far, with one decimal."""
    record = _record(**changes)
    assert owned.uptime_percentage(record, T0 + timedelta(seconds=seconds_later)) == expected


async def test_leaving_connected_adds_the_stretch(database: Database) -> None:
    """A transition out of connected adds now() - last_connected_at to connected_seconds."""
    agent = await _agent(database, "user-a", "agent-a")
    await agents_store.set_status(database, agent.id, "connected", None)
    # Move the stretch's start to a known time; the UPDATE's now() ends it.
    await _sql(database, "UPDATE agents SET last_connected_at = %s WHERE id = %s", T0, agent.id)
    await agents_store.set_status(database, agent.id, "disconnected", "connection_lost")

    seconds, _, ended, status = await _uptime_row(database, agent)
    assert status == "disconnected"
    assert seconds == pytest.approx((ended - T0).total_seconds(), abs=1e-5)

    # A transition that does not leave connected adds nothing.
    await agents_store.set_status(database, agent.id, "stopped", None)
    assert (await _uptime_row(database, agent))[0] == seconds

    # A second stretch adds to the first; the record carries the sum.
    await agents_store.set_status(database, agent.id, "connected", None)
    start = T0 + timedelta(days=1)
    await _sql(database, "UPDATE agents SET last_connected_at = %s WHERE id = %s", start, agent.id)
    await agents_store.set_status(database, agent.id, "logged_out", None)
    total, _, ended_again, _ = await _uptime_row(database, agent)
    assert total == pytest.approx(seconds + (ended_again - start).total_seconds(), abs=1e-5)
    record = await agents_store.get_agent(database, "agent-a")
    assert record is not None and record.connected_seconds == total


async def test_reconnecting_in_the_same_run_keeps_the_stretch(database: Database) -> None:
    """connected -> connected in one run (a restart) counts the stretch that ended."""
    agent = await _agent(database, "user-a", "agent-a")
    await agents_store.set_status(database, agent.id, "connected", None)
    await _sql(database, "UPDATE agents SET last_connected_at = %s WHERE id = %s", T0, agent.id)
    await agents_store.set_status(database, agent.id, "connected", None)
    seconds, started, _, _ = await _uptime_row(database, agent)
    # The new stretch starts at the same now() that ended the old one.
    assert seconds == pytest.approx((started - T0).total_seconds(), abs=1e-5)


async def test_a_stretch_left_by_a_killed_daemon_is_not_counted(
    database: Database, pg_dsn: str
) -> None:
    """A connected stretch another run began (a daemon killed while connected) adds nothing,
    whether the next run finds the agent connected again or not."""
    agent = await _agent(database, "user-a", "agent-a")
    other = await _agent(database, "user-a", "agent-b")
    for record in (agent, other):
        await agents_store.set_status(database, record.id, "connected", None)
    await _sql(database, "UPDATE agents SET last_connected_at = %s", T0)

    # The next run of the daemon opens its own database pool.
    async with open_database(pg_dsn, max_size=2) as next_run:
        await agents_store.set_status(next_run, agent.id, "disconnected", "connection_lost")
        await agents_store.set_status(next_run, other.id, "connected", None)
        assert (await _uptime_row(next_run, agent))[0] == 0.0
        seconds, started, _, _ = await _uptime_row(next_run, other)
        assert seconds == 0.0 and started > T0  # the new stretch starts now

        # What this run began, it counts.
        await _sql(next_run, "UPDATE agents SET last_connected_at = %s WHERE id = %s", T0, other.id)
        await agents_store.mark_all_disconnected(next_run, [other.id], "shutdown")
        seconds, _, ended, status = await _uptime_row(next_run, other)
        assert status == "disconnected"
        assert seconds == pytest.approx((ended - T0).total_seconds(), abs=1e-5)


async def test_shutdown_adds_the_running_stretches(database: Database) -> None:
    """mark_all_disconnected ends every listed connected stretch and leaves the others."""
    up = await _agent(database, "user-a", "agent-up")
    down = await _agent(database, "user-a", "agent-down")
    await agents_store.set_status(database, up.id, "connected", None)
    await agents_store.set_status(database, down.id, "disconnected", None)
    await _sql(database, "UPDATE agents SET last_connected_at = %s", T0)

    await agents_store.mark_all_disconnected(database, [up.id, down.id], "shutdown")

    seconds, _, ended, status = await _uptime_row(database, up)
    assert status == "disconnected"
    assert seconds == pytest.approx((ended - T0).total_seconds(), abs=1e-5)
    assert (await _uptime_row(database, down))[0] == 0.0


# ---------------------------------------------------------------- activity


async def _message(
    db: Database, agent: AgentRecord, direction: str, at: datetime, status: str
) -> None:
    await _sql(
        db,
        "INSERT INTO messages (agent_id, direction, chat_jid, status, created_at)"
        " VALUES (%s, %s, '6281234567890@s.whatsapp.net', %s, %s)",
        agent.id,
        direction,
        status,
        at,
    )


async def test_activity_counts_the_agents_own_rows(database: Database) -> None:
    """session_activity counts one agent's messages by direction and its executions, and
    answers the latest of their times."""
    agent = await _agent(database, "user-a", "agent-a")
    neighbour = await _agent(database, "user-b", "agent-b")

    empty = await owned.session_activity(database, agent.id)
    assert empty == owned.Activity(incoming=0, outgoing=0, executions=0, last_activity=None)

    for minute in range(3):
        await _message(database, agent, "inbound", T0 + timedelta(minutes=minute), "received")
    await _message(database, agent, "outbound", T0 + timedelta(minutes=5), "sent")
    await _message(database, agent, "outbound", T0 + timedelta(minutes=6), "failed")
    await _message(database, neighbour, "inbound", T0 + timedelta(days=9), "received")
    await executions_store.record_execution(
        database, neighbour.id, request={}, response=None, duration=0.1, status="success"
    )

    activity = await owned.session_activity(database, agent.id)
    assert activity == owned.Activity(
        incoming=3, outgoing=2, executions=0, last_activity=T0 + timedelta(minutes=6)
    )

    execution = await executions_store.record_execution(
        database, agent.id, request={}, response={"output": "hi"}, duration=0.2, status="success"
    )
    # Counted when written (sql/009_analytics), at the time it was stored.
    [(at,)] = await _sql(database, "SELECT created_at FROM ai_executions WHERE id = %s", execution)
    activity = await owned.session_activity(database, agent.id)
    assert (activity.executions, activity.last_activity) == (1, at)

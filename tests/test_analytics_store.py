"""The analytics rollups, status history and retention (sql/009_analytics,
gatewayd/store/analytics.py, gatewayd/nursery/retention.py), against a real PostgreSQL: rows
written through the project's own store functions, rollups compared with a recount of the
raw rows."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import trio

from gatewayd.config import AnalyticsConfig, Config
from gatewayd.nursery.retention import run_retention
from gatewayd.store import agents as agents_store
from gatewayd.store import analytics
from gatewayd.store import executions as executions_store
from gatewayd.store import messages as messages_store
from gatewayd.store import webhooks as webhooks_store
from gatewayd.store.agents import AgentRecord
from gatewayd.store.db import Connection, Database, open_database
from gatewayd.store.messages import NewInbound
from gatewayd.store.migrations import migrate_up
from gatewayd.store.webhooks import NewDelivery, TryResult
from gatewayd.whatsapp.port import InboundMessage, Media

GROUP = "120363000000000001@g.us"
PRIVATE = "6281111111111@s.whatsapp.net"
EVER = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))

# The rollups recomputed from the raw rows, independently of the triggers' SQL.
_RECOUNT = """
WITH m AS (
    SELECT agent_id, date_trunc('hour', created_at, 'UTC') AS hour,
        count(*) FILTER (WHERE direction = 'inbound') AS inbound,
        count(*) FILTER (WHERE direction = 'outbound') AS outbound,
        count(*) FILTER (WHERE NOT is_group AND direction = 'inbound') AS private_messages,
        count(*) FILTER (WHERE is_group AND direction = 'inbound') AS group_messages,
        count(*) FILTER (WHERE is_group AND direction = 'inbound'
            AND outcome IN ('answered', 'recorded', 'ignored:media')) AS group_mentions,
        count(*) FILTER (WHERE type = 'text' AND direction = 'inbound') AS type_text,
        count(*) FILTER (WHERE type = 'image' AND direction = 'inbound') AS type_image,
        count(*) FILTER (WHERE type = 'document' AND direction = 'inbound') AS type_document,
        count(*) FILTER (WHERE type = 'audio' AND direction = 'inbound') AS type_audio,
        count(*) FILTER (WHERE type = 'video' AND direction = 'inbound') AS type_video,
        count(*) FILTER (WHERE type IN ('sticker', 'other') AND direction = 'inbound') AS type_other,
        max(created_at) AS last_message
    FROM messages GROUP BY 1, 2
), e AS (
    SELECT agent_id, date_trunc('hour', created_at, 'UTC') AS hour,
        count(*) FILTER (WHERE status = 'success') AS ai_ok,
        count(*) FILTER (WHERE status IN ('timeout', 'error')) AS ai_failed,
        sum(duration_ms) AS ai_ms_sum, max(created_at) AS last_execution
    FROM ai_executions GROUP BY 1, 2
), w AS (
    SELECT agent_id, date_trunc('hour', at, 'UTC') AS hour,
        count(*) FILTER (WHERE success) AS webhook_ok,
        count(*) FILTER (WHERE NOT success) AS webhook_failed,
        sum(duration_ms) AS webhook_ms_sum
    FROM webhook_attempts GROUP BY 1, 2
)
SELECT agent_id, hour,
    coalesce(inbound, 0), coalesce(outbound, 0), coalesce(private_messages, 0),
    coalesce(group_messages, 0), coalesce(group_mentions, 0), coalesce(type_text, 0),
    coalesce(type_image, 0), coalesce(type_document, 0), coalesce(type_audio, 0),
    coalesce(type_video, 0), coalesce(type_other, 0), coalesce(ai_ok, 0), coalesce(ai_failed, 0),
    coalesce(ai_ms_sum, 0), coalesce(webhook_ok, 0), coalesce(webhook_failed, 0),
    coalesce(webhook_ms_sum, 0), greatest(last_message, last_execution)
FROM m FULL JOIN e USING (agent_id, hour) FULL JOIN w USING (agent_id, hour)
ORDER BY agent_id, hour
"""


async def _sql(db: Database, query: str, *args: Any) -> list[tuple[Any, ...]]:
    def work(conn: Connection) -> list[tuple[Any, ...]]:
        cur = conn.execute(query.encode(), args)
        return cur.fetchall() if cur.description is not None else []

    return await db.run(work)


async def _rollups(db: Database) -> list[tuple[Any, ...]]:
    ids = [row[0] for row in await _sql(db, "SELECT id FROM agents")]
    rows = await analytics.hourly(db, ids, *EVER)
    return [attrs.astuple(row) for row in rows]


async def _agent(db: Database, name: str) -> AgentRecord:
    return await agents_store.create_agent(
        db, agent_id=name, name=name, user_id="user", api_key=f"key-{name}"
    )


def _inbound(
    n: int, *, group: bool = False, media: str | None = None, text: str | None = "hi"
) -> InboundMessage:
    return InboundMessage(
        id=f"wa-{n}",
        chat=GROUP if group else PRIVATE,
        sender=PRIVATE,
        timestamp_ms=1_700_000_000_000,
        is_group=group,
        text=text,
        media_type=media,  # type: ignore[arg-type]
        media=Media(mimetype="application/octet-stream", size=1) if media else None,
    )


async def _write_traffic(db: Database, a: AgentRecord, b: AgentRecord) -> list[int | None]:
    """Messages, executions and webhook tries of two agents, through the store functions."""
    hook = NewDelivery("message.received", {"event": "message.received"})
    ids = await messages_store.insert_inbound_batch(
        db,
        [
            NewInbound(a.id, _inbound(1), webhook=hook),
            NewInbound(a.id, _inbound(2, group=True), webhook=hook),
            NewInbound(a.id, _inbound(3, group=True, media="image")),
            NewInbound(b.id, _inbound(4, media="sticker")),
            NewInbound(b.id, _inbound(5, media="document"), webhook=hook),
            NewInbound(a.id, _inbound(1)),  # redelivered: stored once, counted once
        ],
    )
    await messages_store.insert_inbound_batch(db, [NewInbound(b.id, _inbound(6, media="video"))])
    await messages_store.quarantine_inbound(db, a.id, "wa-bad", "unreadable", raw=b"\x00")
    for n, chat, kind in [(7, PRIVATE, "text"), (8, GROUP, "audio"), (9, PRIVATE, "image")]:
        await messages_store.insert_outbound(
            db, a.id, chat=chat, type=kind, text="yo", wa_message_id=f"wa-{n}",
            timestamp_ms=1_700_000_000_000,
        )  # fmt: skip
    for agent, status, seconds in [(a, "success", 1.5), (a, "timeout", 60), (b, "error", 0.25)]:
        await executions_store.record_execution(
            db, agent.id, request={}, response=None, duration=seconds, status=status
        )
    claimed = await webhooks_store.claim_due(db, limit=10, per_session=10, busy={}, lease=30)
    assert len(claimed) == 3
    for i, delivery in enumerate(claimed):
        ok = i != 1
        result = TryResult(
            status="delivered" if ok else "failed", status_code=200 if ok else 500,
            duration_ms=100 + i, error=None if ok else "HTTP 500", next_in=None if ok else 1.0,
        )  # fmt: skip
        await webhooks_store.finish_try(db, delivery, result)
    return ids


async def test_store_writes_update_the_rollups_exactly(database: Database) -> None:
    """Messages, executions and webhook tries written by the store add up to a recount."""
    a, b = await _agent(database, "a"), await _agent(database, "b")
    assert await analytics.totals(database, a.id) == analytics.Totals(0, 0, 0, None)

    await _write_traffic(database, a, b)

    rollups = await _rollups(database)
    assert rollups == await _sql(database, _RECOUNT)
    by_agent = {row[0]: row for row in rollups}
    assert by_agent[a.id][2:4] == (4, 3)  # inbound (quarantined included), outbound
    totals = await analytics.totals(database, a.id)
    [(inbound, outbound, last)] = await _sql(
        database,
        "SELECT count(*) FILTER (WHERE direction = 'inbound'),"
        " count(*) FILTER (WHERE direction = 'outbound'), max(created_at)"
        " FROM messages WHERE agent_id = %s",
        a.id,
    )
    [(executions, last_execution)] = await _sql(
        database, "SELECT count(*), max(created_at) FROM ai_executions WHERE agent_id = %s", a.id
    )
    assert totals == analytics.Totals(inbound, outbound, executions, max(last, last_execution))


async def test_one_statement_is_split_by_agent_and_hour(database: Database) -> None:
    """A multi-row insert spanning agents and hours lands in each (agent, UTC hour) row."""
    a, b = await _agent(database, "a"), await _agent(database, "b")
    t0 = datetime(2024, 3, 1, 10, 59, 59, tzinfo=UTC)
    await _sql(
        database,
        "INSERT INTO messages (agent_id, direction, chat_jid, created_at) VALUES"
        " (%s, 'inbound', 'x', %s), (%s, 'inbound', 'x', %s), (%s, 'outbound', 'x', %s),"
        " (%s, 'inbound', 'x', %s)",
        a.id, t0, a.id, t0 + timedelta(seconds=1), a.id, t0 + timedelta(seconds=2),
        b.id, t0,
    )  # fmt: skip
    rows = await analytics.hourly(database, [a.id, b.id], *EVER)
    hours = {(r.agent_id, r.hour): (r.inbound, r.outbound) for r in rows}
    eleven = datetime(2024, 3, 1, 11, tzinfo=UTC)
    assert hours == {
        (a.id, eleven - timedelta(hours=1)): (1, 0),
        (a.id, eleven): (1, 1),
        (b.id, eleven - timedelta(hours=1)): (1, 0),
    }
    assert await _rollups(database) == await _sql(database, _RECOUNT)
    # start <= hour < end
    only = await analytics.hourly(database, [a.id], eleven, eleven + timedelta(hours=1))
    assert [(r.hour, r.inbound) for r in only] == [(eleven, 1)]


async def test_a_mention_is_counted_once_when_its_outcome_is_first_recorded(
    database: Database,
) -> None:
    """Only an inbound group message the mention check let through counts, and only once."""
    a = await _agent(database, "a")
    ids = await messages_store.insert_inbound_batch(
        database,
        [
            NewInbound(a.id, _inbound(1, group=True)),
            NewInbound(a.id, _inbound(2, group=True)),
            NewInbound(a.id, _inbound(3)),
            NewInbound(a.id, _inbound(4, group=True, media="image", text=None)),
            NewInbound(a.id, _inbound(5, group=True)),
        ],
    )
    one, two, private, media, five = (i for i in ids if i is not None)
    await messages_store.mark_handled_many(
        database,
        [
            (one, "answered"),
            (two, "ignored:group_without_mention"),
            (private, "answered"),
            (media, "ignored:media"),
            (five, "ignored:from_me"),
        ],
    )
    assert await _rollups(database) == await _sql(database, _RECOUNT)
    # A later outcome of the same message (quarantined after a retry, say) adds nothing.
    await messages_store.mark_handled(database, one, "recorded")
    await messages_store.quarantine(database, one, "poison")
    [row] = await analytics.hourly(database, [a.id], *EVER)
    assert (row.group_mentions, row.group_messages) == (2, 4)


async def test_status_changes_are_recorded(database: Database) -> None:
    """Creating an agent and every change of its status add a row; a repeat adds none."""
    a = await _agent(database, "a")
    await agents_store.set_status(database, a.id, "connected", None)
    await agents_store.set_status(database, a.id, "connected", None)  # no change
    await agents_store.set_status(database, a.id, "disconnected", "network")
    history = await analytics.status_history(database, a.id, *EVER)
    assert [status for status, _ in history] == ["awaiting_qr", "connected", "disconnected"]
    times = [at for _, at in history]
    assert times == sorted(times)

    # From the middle: the status in force at start, then the later ones before end.
    mid = await analytics.status_history(database, a.id, times[1], EVER[1])
    assert mid == history[1:]
    before = await analytics.status_history(database, a.id, EVER[0], times[0])
    assert before == []
    await _sql(database, "DELETE FROM agents WHERE id = %s", a.id)
    assert await analytics.status_history(database, a.id, *EVER) == []


async def test_the_migration_backfills_what_was_written_before_it(pg_dsn: str) -> None:
    """Applying 009 over existing rows gives rollups equal to a recount and seeds the history."""
    async with open_database(pg_dsn, max_size=4) as db:
        await migrate_up(db, target=8)
        a, b = await _agent(db, "a"), await _agent(db, "b")
        await agents_store.set_status(db, a.id, "connected", None)
        ids = await _write_traffic(db, a, b)
        await messages_store.mark_handled_many(
            db, [(ids[1] or 0, "answered"), (ids[2] or 0, "ignored:group_without_mention")]
        )
        await _sql(
            db,
            "INSERT INTO messages (agent_id, direction, chat_jid, created_at)"
            " VALUES (%s, 'inbound', 'x', '2024-01-01T05:30:00Z')",
            b.id,
        )

        await migrate_up(db)

        rollups = await _rollups(db)
        assert len(rollups) == 3
        assert rollups == await _sql(db, _RECOUNT)
        [(mentions,)] = await _sql(db, "SELECT sum(group_mentions) FROM analytics_hourly")
        assert mentions == 1
        seeded = await _sql(
            db, "SELECT h.agent_id, h.status, h.at = a.updated_at FROM agent_status_history h"
            " JOIN agents a ON a.id = h.agent_id ORDER BY a.agent_id"
        )  # fmt: skip
        assert seeded == [(a.id, "connected", True), (b.id, "awaiting_qr", True)]
        # And the triggers count from here on.
        await _write_traffic(db, await _agent(db, "c"), await _agent(db, "d"))
        assert await _rollups(db) == await _sql(db, _RECOUNT)


async def _backdate(db: Database, row_ids: list[int], days: int) -> None:
    await _sql(
        db,
        "UPDATE messages SET created_at = now() - make_interval(days => %s) WHERE id = ANY(%s)",
        days,
        row_ids,
    )


async def test_retention_deletes_only_old_messages_in_batches(database: Database) -> None:
    """delete_old_messages removes at most a batch of messages older than the cut; the
    rollups stay as they were."""
    a = await _agent(database, "a")
    ids = await messages_store.insert_inbound_batch(
        database, [NewInbound(a.id, _inbound(n)) for n in range(7)]
    )
    old = [i for i in ids[:5] if i is not None]
    await _backdate(database, old, 40)
    before = await _rollups(database)
    cut = datetime.now(UTC) - timedelta(days=30)

    assert await analytics.delete_old_messages(database, cut, 2) == 2
    assert await analytics.delete_old_messages(database, cut, 2) == 2
    assert await analytics.delete_old_messages(database, cut, 2) == 1
    assert await analytics.delete_old_messages(database, cut, 2) == 0
    left = [row[0] for row in await _sql(database, "SELECT id FROM messages ORDER BY id")]
    assert left == ids[5:]
    assert await _rollups(database) == before
    assert (await analytics.totals(database, a.id)).inbound == 7


def _settings(retention_days: int, batch: int) -> Config:
    return attrs.evolve(
        Config(), analytics=AnalyticsConfig(retention_days=retention_days, retention_batch=batch)
    )


async def _remaining_after_polls(db: Database, want: list[int]) -> list[int]:
    """The message ids, polled once a (virtual) second until they are ``want`` or 300 polls
    passed: the task's database calls run in threads, during which the clock may jump."""
    left: list[int] = []
    for _ in range(300):
        left = [row[0] for row in await _sql(db, "SELECT id FROM messages ORDER BY id")]
        if left == want:
            break
        await trio.sleep(1)
    return left


async def test_the_retention_task_runs_hourly_in_batches(
    database: Database, autojump_clock: trio.abc.Clock
) -> None:
    """run_retention deletes the backlog on its hourly round, batch after batch; 0 keeps all."""
    a = await _agent(database, "a")
    ids = [
        i
        for i in await messages_store.insert_inbound_batch(
            database, [NewInbound(a.id, _inbound(n)) for n in range(6)]
        )
        if i is not None
    ]
    await _backdate(database, ids[:5], 10)
    config = _settings(0, 2)

    async with trio.open_nursery() as nursery:
        await nursery.start(run_retention, database, lambda: config)
        await trio.sleep(1)
        config = _settings(7, 2)
        # The first round (at start) kept everything; the next is due in an hour. The clock
        # stands still while the test reads the table (a database thread would otherwise let
        # it jump to that hour).
        await trio.sleep(1800)
        autojump_clock.autojump_threshold = math.inf  # type: ignore[attr-defined]
        assert len(await _sql(database, "SELECT id FROM messages")) == 6
        autojump_clock.autojump_threshold = 0  # type: ignore[attr-defined]
        await trio.sleep(1800)
        assert await _remaining_after_polls(database, ids[5:]) == ids[5:]
        await _backdate(database, ids[5:], 8)
        await trio.sleep(3600)
        assert await _remaining_after_polls(database, []) == []
        nursery.cancel_scope.cancel()
    assert (await analytics.totals(database, a.id)).inbound == 6

"""What the analytics endpoints read (sql/009_analytics): hourly rollups per agent, the
status history, all-time totals; and the batched delete that retention runs.

The rollups are kept by triggers as rows are written, so every read here costs O(hours in
range) whatever the number of stored messages. Hours are UTC: a caller that needs days in a
time zone whose offset is not a whole number of hours (India, +05:30) gets its day boundaries
at the nearest hour; the API says so (docs/contract/api-v1.md §10).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import date, datetime

import attrs
from psycopg.rows import class_row

from gatewayd.store.db import Connection, Database

__all__ = [
    "COUNTERS",
    "HourRow",
    "Totals",
    "delete_old_messages",
    "hourly",
    "status_history",
    "totals",
]


@attrs.frozen
class HourRow:
    """One agent's counts in one UTC hour (absent hours had nothing)."""

    agent_id: uuid.UUID
    #: The hour's start, in UTC.
    hour: datetime
    inbound: int
    outbound: int
    #: Received messages in private chats / in groups.
    private_messages: int
    group_messages: int
    #: Inbound group messages that mentioned the agent (counted in the message's hour).
    group_mentions: int
    #: Received messages by type; type_other holds stickers and the rest.
    type_text: int
    type_image: int
    type_document: int
    type_audio: int
    type_video: int
    type_other: int
    #: AI calls that succeeded / timed out or failed, and their summed duration.
    ai_ok: int
    ai_failed: int
    ai_ms_sum: int
    #: Webhook tries (every try, not deliveries) that got a 2xx / did not, summed duration.
    webhook_ok: int
    webhook_failed: int
    webhook_ms_sum: int
    #: The newest message or AI execution of the hour; None for an hour of webhook tries only.
    last_activity: datetime | None


#: The counter columns of HourRow, in table order.
COUNTERS: tuple[str, ...] = tuple(
    f.name for f in attrs.fields(HourRow) if f.name not in ("agent_id", "hour", "last_activity")
)
_COLUMNS = ", ".join(f.name for f in attrs.fields(HourRow))


async def hourly(
    db: Database, agent_ids: Sequence[uuid.UUID], start: datetime, end: datetime
) -> list[HourRow]:
    """The rollup rows of these agents with ``start <= hour < end``, by agent, then hour.

    ``start`` and ``end`` must be aware datetimes; a bound inside an hour leaves that hour
    out (start) or in (end) as the comparison says."""

    def work(conn: Connection) -> list[HourRow]:
        with conn.cursor(row_factory=class_row(HourRow)) as cur:
            cur.execute(
                f"SELECT {_COLUMNS} FROM analytics_hourly WHERE agent_id = ANY(%s)"
                " AND hour >= %s AND hour < %s ORDER BY agent_id, hour",
                (list(agent_ids), start, end),
            )
            return cur.fetchall()

    return await db.run(work)


#: The local time of an hour bucket's middle: the rule that puts a bucket in a local day (a zone
#: whose offset is not whole hours gets its day boundaries at the nearest UTC hour).
_LOCAL = "((hour + interval '30 minutes') AT TIME ZONE %(tz)s)"


async def local_days(
    db: Database,
    agent_ids: Sequence[uuid.UUID],
    start: datetime,
    end: datetime,
    tz: str,
) -> list[tuple[date, HourRow]]:
    """The rollups of these agents with ``start <= hour < end`` summed per agent and local day
    of the IANA zone ``tz``, by agent then day: one row per agent and day however busy the
    hours were (``hour`` is the day's first bucket)."""
    sums = ", ".join(f"sum({name})::bigint AS {name}" for name in COUNTERS)
    query = (
        f"SELECT {_LOCAL}::date AS day, agent_id, min(hour) AS hour,"
        f" {sums}, max(last_activity) AS last_activity FROM analytics_hourly"
        " WHERE agent_id = ANY(%(ids)s) AND hour >= %(start)s AND hour < %(end)s"
        " GROUP BY agent_id, 1 ORDER BY agent_id, 1"
    )
    params = {"ids": list(agent_ids), "start": start, "end": end, "tz": tz}

    def work(conn: Connection) -> list[tuple[date, HourRow]]:
        rows = conn.execute(query.encode(), params).fetchall()
        return [(row[0], HourRow(*row[1:])) for row in rows]

    return await db.run(work)


async def local_hours(
    db: Database,
    agent_ids: Sequence[uuid.UUID],
    days: tuple[date, date],
    start: datetime,
    end: datetime,
    tz: str,
) -> dict[int, int]:
    """Received messages per local hour of the day (zone ``tz``) over the local ``days``
    (first and last, inclusive), for peak hours: only the hours with messages."""
    query = (
        f"SELECT extract(hour FROM {_LOCAL})::int, sum(inbound)::bigint FROM analytics_hourly"
        " WHERE agent_id = ANY(%(ids)s) AND hour >= %(start)s AND hour < %(end)s"
        f" AND inbound > 0 AND {_LOCAL}::date BETWEEN %(first)s AND %(last)s GROUP BY 1"
    )
    params = {
        "ids": list(agent_ids),
        "start": start,
        "end": end,
        "tz": tz,
        "first": days[0],
        "last": days[1],
    }

    def work(conn: Connection) -> dict[int, int]:
        return {int(r[0]): int(r[1]) for r in conn.execute(query.encode(), params)}

    return await db.run(work)


async def status_history(
    db: Database, agent_id: uuid.UUID, start: datetime, end: datetime
) -> list[tuple[str, datetime]]:
    """The agent's status transitions as (status, at), oldest first: the last one at or
    before ``start`` (the status the range begins in), if any, then every one after ``start``
    and before ``end``."""

    def work(conn: Connection) -> list[tuple[str, datetime]]:
        rows = conn.execute(
            "(SELECT status, at, id FROM agent_status_history WHERE agent_id = %(a)s"
            "  AND at <= %(s)s ORDER BY at DESC, id DESC LIMIT 1)"
            " UNION ALL"
            " (SELECT status, at, id FROM agent_status_history WHERE agent_id = %(a)s"
            "  AND at > %(s)s AND at < %(e)s)"
            " ORDER BY at, id",
            {"a": agent_id, "s": start, "e": end},
        ).fetchall()
        return [(str(r[0]), r[1]) for r in rows]

    return await db.run(work)


@attrs.frozen
class Totals:
    """An agent's all-time counts, from the rollups (messages deleted by retention count)."""

    inbound: int
    outbound: int
    #: AI executions: ai_ok + ai_failed.
    executions: int
    #: The newest message or AI execution; None when there is none.
    last_activity: datetime | None


async def totals(db: Database, agent_id: uuid.UUID) -> Totals:
    """The agent's counts over all its rollup rows (one per active hour)."""

    def work(conn: Connection) -> Totals:
        row = conn.execute(
            "SELECT coalesce(sum(inbound), 0), coalesce(sum(outbound), 0),"
            " coalesce(sum(ai_ok + ai_failed), 0), max(last_activity)"
            " FROM analytics_hourly WHERE agent_id = %s",
            (agent_id,),
        ).fetchone()
        assert row is not None
        return Totals(int(row[0]), int(row[1]), int(row[2]), row[3])

    return await db.run(work)


async def delete_old_messages(db: Database, older_than: datetime, batch: int) -> int:
    """Delete at most ``batch`` messages created before ``older_than``, in one transaction;
    how many went. The rollups keep counting them (no trigger on DELETE). Their executions
    and deliveries stay, with ``message_id`` set to NULL (the foreign keys of 001/008)."""

    def work(conn: Connection) -> int:
        return conn.execute(
            "DELETE FROM messages WHERE id IN"
            " (SELECT id FROM messages WHERE created_at < %s LIMIT %s)",
            (older_than, batch),
        ).rowcount

    return await db.run(work)

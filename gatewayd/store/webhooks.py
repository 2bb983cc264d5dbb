"""The webhook outbox (sql/008_webhooks): deliveries, their tries, and what analytics reads.

A delivery of an inbound message is inserted by ``insert_for_messages`` inside the inbound
writer's transaction (gatewayd/store/messages.py), so it exists exactly when the message
does. Workers (gatewayd/nursery/webhooks.py) take due rows with ``claim_due`` — ``FOR UPDATE
SKIP LOCKED`` and a lease, so several workers, in one process or several, never take the
same row, and a row whose worker died comes back once its lease has passed — and record each
try with ``finish_try``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any, Literal

import attrs
from psycopg.rows import class_row
from psycopg.types.json import Json, Jsonb

from gatewayd.store.db import Connection, Database

STATUSES = ("pending", "failed", "delivered", "dead")
Status = Literal["pending", "failed", "delivered", "dead"]


@attrs.frozen
class NewDelivery:
    """An event on its way into the outbox: its name and the JSON body receivers get."""

    event: str
    payload: Mapping[str, Any]


@attrs.frozen(kw_only=True)
class Claimed:
    """A delivery a worker holds (until ``leased_until``), with its session's webhook
    settings as they are now: a retry goes where the session points today."""

    id: int
    agent_id: uuid.UUID
    event: str
    payload: dict[str, Any]
    attempts: int
    schedule_start: datetime
    lease_token: uuid.UUID
    url: str | None
    secret: str | None = attrs.field(repr=False)
    headers: dict[str, str] = attrs.field(repr=False)
    #: The stored message the delivery describes (None for other events).
    message_row: int | None = None

    @property
    def webhook_id(self) -> str:
        """The ``webhook-id`` header: the same on every try, so receivers can deduplicate."""
        return webhook_id(self.id)


def webhook_id(delivery_id: int) -> str:
    return f"msg_{delivery_id}"


@attrs.frozen(kw_only=True)
class DeliveryRow:
    """One delivery as the deliveries list shows it."""

    id: int
    event: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    wa_message_id: str | None

    @property
    def webhook_id(self) -> str:
        return webhook_id(self.id)


@attrs.frozen(kw_only=True)
class DayStats:
    """Tries of one session on one day (UTC): analytics (docs/contract/api-v1.md §10)."""

    day: date
    successes: int
    failures: int
    mean_duration_ms: float | None


_INSERT = (
    "INSERT INTO webhook_deliveries (agent_id, message_id, event, payload) VALUES (%s, %s, %s, %s)"
)


def insert_for_messages(
    conn: Connection, rows: Sequence[tuple[uuid.UUID, int, NewDelivery]]
) -> None:
    """Inside the caller's transaction: one delivery per (agent, message row, event)."""
    if rows:
        with conn.cursor() as cur:
            cur.executemany(
                _INSERT + " ON CONFLICT DO NOTHING",
                [(agent, row, d.event, Json(dict(d.payload))) for agent, row, d in rows],
            )


async def enqueue(
    db: Database, agent_uuid: uuid.UUID, delivery: NewDelivery, *, message_row: int | None = None
) -> int | None:
    """Queue one event for the session's webhook; its delivery id (None: already queued for
    that message)."""

    def work(conn: Connection) -> int | None:
        row = conn.execute(
            _INSERT + " ON CONFLICT DO NOTHING RETURNING id",
            (agent_uuid, message_row, delivery.event, Json(dict(delivery.payload))),
        ).fetchone()
        return None if row is None else int(row[0])

    return await db.run(work)


_CLAIM = """
WITH open AS (
    SELECT d.id, d.agent_id, row_number() OVER (
        PARTITION BY d.agent_id ORDER BY d.next_attempt_at, d.id) AS place
    FROM webhook_deliveries d
    WHERE d.status IN ('pending', 'failed') AND d.next_attempt_at <= now()
      AND (d.leased_until IS NULL OR d.leased_until <= now())
      AND d.agent_id <> ALL(%(full)s::uuid[])
    ORDER BY d.next_attempt_at, d.id
    LIMIT %(scan)s
), wanted AS (
    SELECT o.id FROM open o
    WHERE o.place <= %(per_session)s - COALESCE((%(busy)s::jsonb ->> o.agent_id::text)::int, 0)
    ORDER BY o.id LIMIT %(limit)s
), locked AS (
    SELECT d.id FROM webhook_deliveries d JOIN wanted w ON w.id = d.id
    WHERE d.status IN ('pending', 'failed')
      AND (d.leased_until IS NULL OR d.leased_until <= now())
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_deliveries d
SET attempts = d.attempts + 1, lease_token = %(token)s,
    leased_until = now() + make_interval(secs => %(lease)s)
FROM locked, agents a
WHERE d.id = locked.id AND a.id = d.agent_id
RETURNING d.id, d.agent_id, d.event, d.payload, d.attempts, d.schedule_start,
    d.lease_token, a.webhook_url AS url, a.webhook_secret AS secret, a.webhook_headers AS headers,
    d.message_id AS message_row
"""


async def claim_due(
    db: Database,
    *,
    limit: int,
    per_session: int,
    busy: Mapping[uuid.UUID, int],
    lease: float,
) -> list[Claimed]:
    """Take up to ``limit`` due deliveries for ``lease`` seconds, at most ``per_session`` in
    flight per session counting the ``busy`` ones this worker already has."""
    if limit <= 0:
        return []
    full = [agent for agent, n in busy.items() if n >= per_session]
    params = {
        "full": full,
        "busy": Jsonb({str(agent): n for agent, n in busy.items()}),
        "per_session": per_session,
        "scan": max(limit * 4, 100),
        "limit": limit,
        "token": uuid.uuid4(),
        "lease": lease,
    }

    def work(conn: Connection) -> list[Claimed]:
        with conn.cursor(row_factory=class_row(Claimed)) as cur:
            cur.execute(_CLAIM, params)
            return cur.fetchall()

    return await db.run(work)


async def release_backlog(db: Database, agent_uuid: uuid.UUID) -> int:
    """Make the session's failed deliveries due now (its receiver answered again); how many."""

    def work(conn: Connection) -> int:
        cur = conn.execute(
            "UPDATE webhook_deliveries SET next_attempt_at = now()"
            " WHERE agent_id = %s AND status = 'failed' AND next_attempt_at > now()",
            (agent_uuid,),
        )
        return cur.rowcount

    return await db.run(work)


async def seconds_to_next_due(db: Database) -> float | None:
    """Seconds until the next delivery falls due (a lease running out counts), 0 when one is
    due now, None when nothing waits at all."""

    def work(conn: Connection) -> float | None:
        row = conn.execute(
            "SELECT extract(epoch FROM min(CASE WHEN leased_until > now() THEN leased_until"
            " ELSE next_attempt_at END) - now()) FROM webhook_deliveries"
            " WHERE status IN ('pending', 'failed')"
        ).fetchone()
        return None if row is None or row[0] is None else max(0.0, float(row[0]))

    return await db.run(work)


@attrs.frozen(kw_only=True)
class TryResult:
    """What one try came to; ``next_in`` is None when no further try is due."""

    status: Status
    status_code: int | None
    duration_ms: int
    error: str | None
    next_in: float | None = None


async def finish_try(db: Database, claimed: Claimed, result: TryResult) -> bool:
    """Record the try and the delivery's new state; False when the lease was lost meanwhile
    (another worker has the row now: only the try is recorded)."""

    def work(conn: Connection) -> bool:
        conn.execute(
            "INSERT INTO webhook_attempts (delivery_id, agent_id, n, status_code, duration_ms,"
            " error, success) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                claimed.id,
                claimed.agent_id,
                claimed.attempts,
                result.status_code,
                result.duration_ms,
                result.error,
                result.status == "delivered",
            ),
        )
        updated = conn.execute(
            "UPDATE webhook_deliveries SET status = %s, last_status_code = %s, last_error = %s,"
            " leased_until = NULL, lease_token = NULL,"
            " next_attempt_at = CASE WHEN %s::float8 IS NULL THEN next_attempt_at"
            "   ELSE now() + make_interval(secs => %s::float8) END,"
            " delivered_at = CASE WHEN %s = 'delivered' THEN now() ELSE delivered_at END"
            " WHERE id = %s AND lease_token = %s",
            (
                result.status,
                result.status_code,
                result.error,
                result.next_in,
                result.next_in,
                result.status,
                claimed.id,
                claimed.lease_token,
            ),
        ).rowcount
        return bool(updated)

    return await db.run(work)


async def list_deliveries(
    db: Database,
    agent_uuid: uuid.UUID,
    status: str | None = None,
    limit: int = 50,
    cursor: int | None = None,
) -> list[DeliveryRow]:
    """A session's deliveries, newest first; ``cursor`` is the last id of the previous page
    (the next page holds smaller ids). ``next_attempt_at`` is None once none is due."""

    def work(conn: Connection) -> list[DeliveryRow]:
        with conn.cursor(row_factory=class_row(DeliveryRow)) as cur:
            cur.execute(
                "SELECT d.id, d.event, d.status, d.attempts, d.last_status_code, d.last_error,"
                " CASE WHEN d.status IN ('pending', 'failed') THEN d.next_attempt_at END"
                "   AS next_attempt_at, d.created_at, d.delivered_at,"
                " m.wa_message_id"
                " FROM webhook_deliveries d LEFT JOIN messages m ON m.id = d.message_id"
                " WHERE d.agent_id = %s AND (%s::text IS NULL OR d.status = %s)"
                " AND (%s::bigint IS NULL OR d.id < %s) ORDER BY d.id DESC LIMIT %s",
                (agent_uuid, status, status, cursor, cursor, limit),
            )
            return cur.fetchall()

    return await db.run(work)


async def replay(db: Database, agent_uuid: uuid.UUID, delivery_id: int) -> bool:
    """Make a session's delivery due now on a fresh schedule (tries counted from 0 again;
    the tries so far stay in ``webhook_attempts``). False when the session has no such
    delivery."""

    def work(conn: Connection) -> bool:
        return bool(
            conn.execute(
                "UPDATE webhook_deliveries SET status = 'pending', attempts = 0,"
                " next_attempt_at = now(), schedule_start = now(), leased_until = NULL,"
                " lease_token = NULL WHERE id = %s AND agent_id = %s",
                (delivery_id, agent_uuid),
            ).rowcount
        )

    return await db.run(work)


async def attempts_of(db: Database, delivery_id: int) -> list[dict[str, Any]]:
    """Every try of a delivery, oldest first."""

    def work(conn: Connection) -> list[dict[str, Any]]:
        rows = conn.execute(
            "SELECT n, status_code, duration_ms, error, success, at FROM webhook_attempts"
            " WHERE delivery_id = %s ORDER BY id",
            (delivery_id,),
        ).fetchall()
        keys = ("n", "status_code", "duration_ms", "error", "success", "at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    return await db.run(work)


async def daily_stats(
    db: Database, agent_uuid: uuid.UUID, since: datetime | None = None
) -> list[DayStats]:
    """Successes, failures and the mean duration of a session's tries, per UTC day, oldest
    first (every try counts: a delivery that succeeded on its third try adds two failures)."""

    def work(conn: Connection) -> list[DayStats]:
        with conn.cursor(row_factory=class_row(DayStats)) as cur:
            cur.execute(
                "SELECT (at AT TIME ZONE 'UTC')::date AS day,"
                " count(*) FILTER (WHERE success) AS successes,"
                " count(*) FILTER (WHERE NOT success) AS failures,"
                " avg(duration_ms)::float8 AS mean_duration_ms"
                " FROM webhook_attempts WHERE agent_id = %s"
                " AND (%s::timestamptz IS NULL OR at >= %s) GROUP BY 1 ORDER BY 1",
                (agent_uuid, since, since),
            )
            return cur.fetchall()

    return await db.run(work)


async def ensure_secret(db: Database, agent_uuid: uuid.UUID, secret: str) -> str | None:
    """The session's webhook secret, storing ``secret`` first when it has none (a session whose
    URL was set before secrets existed). None when the session is gone."""

    def work(conn: Connection) -> str | None:
        conn.execute(
            "UPDATE agents SET webhook_secret = %s WHERE id = %s AND webhook_secret IS NULL",
            (secret, agent_uuid),
        )
        row = conn.execute(
            "SELECT webhook_secret FROM agents WHERE id = %s", (agent_uuid,)
        ).fetchone()
        return None if row is None else row[0]

    return await db.run(work)


async def counts_by_status(db: Database, agent_uuid: uuid.UUID) -> dict[str, int]:
    """How many of a session's deliveries are in each status."""

    def work(conn: Connection) -> dict[str, int]:
        rows = conn.execute(
            "SELECT status, count(*) FROM webhook_deliveries WHERE agent_id = %s GROUP BY 1",
            (agent_uuid,),
        ).fetchall()
        return {str(status): int(n) for status, n in rows}

    return await db.run(work)

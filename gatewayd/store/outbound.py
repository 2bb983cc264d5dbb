"""Outbound rows: every send is written before it goes out.

A row's ``status`` (see sql/003_durability.up.sql) moves ``queued``/``pending`` →
``sending`` → ``sent``, or ends ``failed``, ``unknown`` (the process or the tree died while
WhatsApp had it: never resent, visible instead) or ``expired`` (a reply that waited longer
than ``agents.reply_max_age`` for a connection). A reply row points at its inbound message
(``reply_to``); when the reply reaches a final state, the inbound message is handled in the
same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import attrs
import cattrs
from psycopg.types.json import Jsonb

from gatewayd.jid import is_group
from gatewayd.nursery.commands import Outgoing
from gatewayd.store.db import Connection, Database

__all__ = [
    "OutboundRow",
    "finish",
    "insert_pending",
    "mark_sending",
    "mark_sent",
    "queue_reply",
    "queued",
    "reconcile",
    "queue",
    "requeue",
    "find_by_key",
    "release_key",
    "KeyedSend",
]

_converter = cattrs.Converter()
# Media bytes never go into the row: only replies (text) are resumed after a restart.
_converter.register_unstructure_hook(bytes, lambda _: None)

Final = Literal["failed", "unknown", "expired"]


@attrs.frozen
class OutboundRow:
    """A queued send as the outbox reads it back."""

    row_id: int
    message: Outgoing
    created_at: datetime
    reply_to: int | None
    trace_id: str | None
    #: The WhatsApp id of the message this replies to.
    reply_to_wa_id: str | None = None


@attrs.frozen
class KeyedSend:
    """What a retried Idempotency-Key finds: the first send's row."""

    row_id: int
    status: str
    wa_message_id: str | None
    timestamp_ms: int | None
    result: Mapping[str, Any] | None


def _payload(message: Outgoing) -> Jsonb:
    raw = _converter.unstructure(message)
    raw.pop("data", None)
    return Jsonb(raw)


def _insert(
    conn: Connection,
    agent_uuid: uuid.UUID,
    message: Outgoing,
    *,
    status: str,
    trace_id: str | None,
    reply_to: int | None = None,
    key: str | None = None,
) -> int | None:
    media = None
    if message.data is not None:
        media = {
            "mimetype": message.mimetype,
            "filename": message.filename,
            "size": len(message.data),
        }
    row = conn.execute(
        "INSERT INTO messages (agent_id, direction, type, chat_jid, text, quoted_id, media, status,"
        " trace_id, is_group, payload, reply_to, idempotency_key)"
        " VALUES (%s, 'outbound', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (agent_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
        " RETURNING id",
        (
            agent_uuid, message.kind, message.to, message.text,
            message.quote.message_id if message.quote else None,
            Jsonb(media) if media else None, status, trace_id, is_group(message.to),
            _payload(message), reply_to, key,
        ),
    ).fetchone()  # fmt: skip
    return None if row is None else int(row[0])


async def insert_pending(
    db: Database, agent_uuid: uuid.UUID, message: Outgoing, *, trace_id: str | None, key: str | None
) -> int | None:
    """Record an API send before it is queued; None when ``key`` was used before."""
    return await db.run(
        lambda conn: _insert(
            conn, agent_uuid, message, status="pending", trace_id=trace_id, key=key
        )
    )


async def find_by_key(db: Database, agent_uuid: uuid.UUID, key: str) -> KeyedSend | None:
    def work(conn: Connection) -> KeyedSend | None:
        row = conn.execute(
            "SELECT id, status, wa_message_id, sent_at, result FROM messages"
            " WHERE agent_id = %s AND idempotency_key = %s",
            (agent_uuid, key),
        ).fetchone()
        if row is None:
            return None
        sent_ms = int(row[3].timestamp() * 1000) if row[3] is not None else None
        return KeyedSend(int(row[0]), row[1], row[2], sent_ms, row[4])

    return await db.run(work)


async def release_key(db: Database, row_id: int, reason: str, *, sending: bool = False) -> None:
    """An API send refused before WhatsApp had it: failed, and its key free again.

    ``sending``: the row was already marked ``sending`` but the client refused before
    sending (not connected), so it may be released too."""
    states = ("pending", "sending") if sending else ("pending",)

    def work(conn: Connection) -> None:
        conn.execute(
            "UPDATE messages SET status = 'failed', error = %s, idempotency_key = NULL"
            " WHERE id = %s AND status = ANY(%s)",
            (reason, row_id, list(states)),
        )

    await db.run(work)


async def queue_reply(
    db: Database,
    agent_uuid: uuid.UUID,
    inbound_row: int,
    message: Outgoing,
    *,
    trace_id: str | None,
) -> int | None:
    """Durably queue the AI's reply to ``inbound_row``, which becomes ``answered``; None (and
    nothing queued) when that message is no longer waiting for an answer (handled,
    quarantined, or answered already by someone else)."""

    def work(conn: Connection) -> int | None:
        taken = conn.execute(
            "UPDATE messages SET status = 'answered' WHERE id = %s AND status = 'received'"
            " AND handled_at IS NULL RETURNING id",
            (inbound_row,),
        ).fetchone()
        if taken is None:
            return None
        row_id = _insert(
            conn, agent_uuid, message, status="queued", trace_id=trace_id, reply_to=inbound_row
        )
        assert row_id is not None  # no key: no conflict possible
        return row_id

    return await db.run(work)


async def queue(
    db: Database, agent_uuid: uuid.UUID, message: Outgoing, *, trace_id: str | None
) -> int:
    """Durably queue a send nobody waits for (a developer report)."""

    def work(conn: Connection) -> int:
        row_id = _insert(conn, agent_uuid, message, status="queued", trace_id=trace_id)
        assert row_id is not None
        return row_id

    return await db.run(work)


async def queued(db: Database, agent_uuid: uuid.UUID, limit: int) -> list[OutboundRow]:
    """The agent's queued sends, oldest first."""

    def work(conn: Connection) -> list[OutboundRow]:
        rows = conn.execute(
            "SELECT o.id, o.payload, o.created_at, o.reply_to, o.trace_id, i.wa_message_id"
            " FROM messages o LEFT JOIN messages i ON i.id = o.reply_to"
            " WHERE o.agent_id = %s AND o.direction = 'outbound' AND o.status = 'queued'"
            " ORDER BY o.id LIMIT %s",
            (agent_uuid, limit),
        ).fetchall()
        return [
            OutboundRow(int(r[0]), _converter.structure(r[1], Outgoing), r[2], r[3], r[4], r[5])
            for r in rows
        ]

    return await db.run(work)


async def mark_sending(db: Database, row_id: int) -> bool:
    """The row is about to be handed to WhatsApp; False when it is no longer open."""

    def work(conn: Connection) -> bool:
        row = conn.execute(
            "UPDATE messages SET status = 'sending' WHERE id = %s"
            " AND status IN ('queued', 'pending') RETURNING id",
            (row_id,),
        ).fetchone()
        return row is not None

    return await db.run(work)


def _settle_inbound(conn: Connection, row_id: int, outcome: str) -> None:
    conn.execute(
        "UPDATE messages SET handled_at = now(), outcome = %s WHERE id ="
        " (SELECT reply_to FROM messages WHERE id = %s) AND handled_at IS NULL",
        (outcome, row_id),
    )


async def mark_sent(
    db: Database, row_id: int, *, wa_message_id: str, timestamp_ms: int, result: Mapping[str, Any]
) -> None:
    sent_at = datetime.fromtimestamp(timestamp_ms / 1000, UTC)

    def work(conn: Connection) -> None:
        conn.execute(
            "UPDATE messages SET status = 'sent', wa_message_id = %s, sent_at = %s, result = %s"
            " WHERE id = %s",
            (wa_message_id, sent_at, Jsonb(dict(result)), row_id),
        )
        _settle_inbound(conn, row_id, "replied")

    await db.run(work)


async def finish(
    db: Database, row_id: int, status: Final, error: str, result: Mapping[str, Any] | None = None
) -> None:
    """End a send without a WhatsApp id; its inbound message becomes ``reply_<status>``."""

    def work(conn: Connection) -> None:
        conn.execute(
            "UPDATE messages SET status = %s, error = %s, result = %s WHERE id = %s",
            (status, error[:1000], Jsonb(dict(result)) if result else None, row_id),
        )
        _settle_inbound(conn, row_id, f"reply_{status}")

    await db.run(work)


async def requeue(db: Database, row_id: int) -> None:
    """WhatsApp refused the send before taking it (not connected): it may go out later."""

    def work(conn: Connection) -> None:
        conn.execute(
            "UPDATE messages SET status = 'queued' WHERE id = %s AND status = 'sending'",
            (row_id,),
        )

    await db.run(work)


async def reconcile(db: Database) -> dict[str, int]:
    """At process start: sends a dead process left behind.

    ``sending`` becomes ``unknown`` (WhatsApp may have it; never resent). ``pending`` API
    sends become ``failed`` (never handed over; their callers are gone and may retry with
    their key, which is freed). Counts by new status.
    """

    def work(conn: Connection) -> dict[str, int]:
        unknown = conn.execute(
            "UPDATE messages SET status = 'unknown', error = 'the daemon stopped while sending'"
            " WHERE direction = 'outbound' AND status = 'sending' RETURNING id"
        ).fetchall()
        for (row_id,) in unknown:
            _settle_inbound(conn, row_id, "reply_unknown")
        failed = conn.execute(
            "UPDATE messages SET status = 'failed', error = 'the daemon stopped before sending',"
            " idempotency_key = NULL WHERE direction = 'outbound' AND status = 'pending'"
            " RETURNING id"
        ).fetchall()
        return {"unknown": len(unknown), "failed": len(failed)}

    return await db.run(work)

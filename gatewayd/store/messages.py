"""The messages table: every inbound message (persisted before anything else is done
with it) and every message the daemon sent."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs
import cattrs
from psycopg.types.json import Jsonb

from gatewayd.jid import is_group
from gatewayd.store import webhooks as webhooks_store
from gatewayd.store.db import Connection, Database
from gatewayd.store.webhooks import NewDelivery
from gatewayd.whatsapp.port import InboundMessage

_converter = cattrs.Converter()


@attrs.frozen
class StoredInbound:
    """An inbound message with its row id, as the forwarder receives it."""

    row_id: int
    message: InboundMessage
    trace_id: str | None = None
    #: Forwarding attempts counted so far, when stored with its first one already counted
    #: (``NewInbound.first_attempt``); None: the forwarder counts it (``begin_attempts``).
    attempts: int | None = None


def _type_of(message: InboundMessage) -> str:
    return message.media_type or "text"


@attrs.frozen
class NewInbound:
    """A received message on its way into the table (strings already cleaned)."""

    agent_uuid: uuid.UUID
    message: InboundMessage
    #: Originals of cleaned strings, by field path (see ``gatewayd.textsafe``).
    escaped: Mapping[str, str] = attrs.field(factory=dict)
    trace_id: str | None = None
    #: Its webhook delivery, written in the same transaction (sql/008_webhooks).
    webhook: NewDelivery | None = None
    #: Stored with its first forwarding attempt counted: it goes right after the commit to
    #: an idle forwarder, which then need not count it in a transaction of its own.
    first_attempt: bool = False


# Timestamps WhatsApp (or a broken client) sends may be anything; PostgreSQL's range is
# wider than this, Python's datetime is not.
_MAX_TIMESTAMP_MS = 253_402_300_799_000  # 9999-12-31T23:59:59Z


def _received_at(timestamp_ms: int) -> datetime:
    if 0 <= timestamp_ms <= _MAX_TIMESTAMP_MS:
        return datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return datetime.now(UTC)


_INBOUND_COLUMNS = (
    "INSERT INTO messages (agent_id, direction, type, chat_jid, chat_lid, sender_jid, sender_lid,"
    " is_group, push_name, text, quoted_id, media, wa_message_id, status, trace_id, received_at,"
    " payload, mentioned_jids, attempts) VALUES "
)
_INBOUND_ROW = (
    "(%s, 'inbound', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'received', %s, %s, %s, %s, %s)"
)
_INBOUND_CONFLICT = (
    " ON CONFLICT (agent_id, direction, wa_message_id) DO NOTHING"
    " RETURNING id, agent_id, wa_message_id"
)


def unstructure_inbound(message: InboundMessage) -> dict[str, Any]:
    """The message as the JSON kept in the ``payload`` column."""
    raw: dict[str, Any] = _converter.unstructure(message)
    return raw


def structure_inbound(payload: dict[str, Any]) -> InboundMessage:
    """The message back from its ``payload`` (originals of cleaned strings left aside)."""
    fields = {k: v for k, v in payload.items() if k != "escaped"}
    return _converter.structure(fields, InboundMessage)


def _media_column(media: dict[str, Any]) -> dict[str, Any]:
    """The ``media`` column: the attachment's description without the adapter's download
    reference (its keys stay in ``payload``; gatewayd/store/inbound_media.py)."""
    return {k: v for k, v in media.items() if k != "ref"}


def _inbound_params(item: NewInbound) -> tuple[object, ...]:
    message = item.message
    payload = unstructure_inbound(message)
    if item.escaped:
        payload["escaped"] = dict(item.escaped)
    return (
        item.agent_uuid, _type_of(message), message.chat, message.chat_lid, message.sender,
        message.sender_lid, message.is_group, message.push_name, message.text,
        message.quoted_id, Jsonb(_media_column(payload["media"])) if message.media else None,
        message.id,
        item.trace_id, _received_at(message.timestamp_ms), Jsonb(payload),
        list(message.mentioned_jids), 1 if item.first_attempt else 0,
    )  # fmt: skip


async def insert_inbound_batch(db: Database, items: Sequence[NewInbound]) -> list[int | None]:
    """Persist received messages in one transaction; for each, its row id, or None when
    WhatsApp redelivered one already stored (the unique (agent, direction, wa id) key).

    A newly stored message's ``webhook`` delivery is inserted in the same transaction (the
    outbox); a redelivered one adds none."""
    if not items:
        return []
    params = [_inbound_params(item) for item in items]

    # One statement for the whole batch: the analytics rollup trigger then runs once per
    # batch, not once per message.
    query = (
        _INBOUND_COLUMNS + ", ".join([_INBOUND_ROW] * len(params)) + _INBOUND_CONFLICT
    ).encode()
    flat = [value for row in params for value in row]

    def ids_of(inserted_rows: list[tuple[Any, ...]]) -> list[int | None]:
        inserted = {(agent_id, wa_id): int(row_id) for row_id, agent_id, wa_id in inserted_rows}
        # A redelivery (stored before, or twice in this batch) gets None: the first wins.
        return [inserted.pop((item.agent_uuid, item.message.id), None) for item in items]

    def work(conn: Connection) -> list[int | None]:
        ids = ids_of(conn.execute(query, flat).fetchall())
        webhooks_store.insert_for_messages(
            conn,
            [
                (item.agent_uuid, row_id, item.webhook)
                for item, row_id in zip(items, ids, strict=True)
                if row_id is not None and item.webhook is not None
            ],
        )
        return ids

    if any(item.webhook is not None for item in items):
        return await db.run(work)
    # No webhook to queue: the insert is the only statement, atomic on its own: one round
    # trip instead of three (BEGIN, INSERT, COMMIT), from the Trio thread.
    return ids_of((await db.execute(query, flat)).rows)


async def insert_inbound(
    db: Database, agent_uuid: uuid.UUID, message: InboundMessage, trace_id: str | None = None
) -> int | None:
    """Persist one received message (see :func:`insert_inbound_batch`)."""
    ids = await insert_inbound_batch(db, [NewInbound(agent_uuid, message, trace_id=trace_id)])
    return ids[0]


async def quarantine_inbound(
    db: Database,
    agent_uuid: uuid.UUID,
    wa_message_id: str,
    reason: str,
    raw: bytes | None = None,
) -> int | None:
    """Store what is left of a message that could not be stored or read: its id, why, and
    (when given) the raw event, base64 in ``payload.raw``.

    The row is handled at once (outcome ``quarantined:<reason>``) so nothing forwards it."""
    payload = Jsonb({"raw": base64.b64encode(raw).decode("ascii")}) if raw is not None else None

    def work(conn: Connection) -> int | None:
        row = conn.execute(
            "INSERT INTO messages (agent_id, direction, chat_jid, wa_message_id, status, error,"
            " handled_at, outcome, payload)"
            " VALUES (%s, 'inbound', '', %s, 'quarantined', %s, now(), %s, %s)"
            " ON CONFLICT (agent_id, direction, wa_message_id) DO NOTHING RETURNING id",
            (agent_uuid, wa_message_id, reason, f"quarantined:{reason[:200]}", payload),
        ).fetchone()
        return None if row is None else int(row[0])

    return await db.run(work)


async def mark_handled(db: Database, row_id: int, outcome: str) -> None:
    def work(conn: Connection) -> None:
        conn.execute(
            "UPDATE messages SET handled_at = now(), outcome = %s WHERE id = %s", (outcome, row_id)
        )

    await db.run(work)


async def mark_handled_many(db: Database, outcomes: Sequence[tuple[int, str]]) -> list[None]:
    """Record many outcomes in one transaction (see ``gatewayd/nursery/groupcommit.py``)."""

    def work(conn: Connection) -> None:
        with conn.cursor() as cur:
            cur.executemany(
                "UPDATE messages SET handled_at = now(), outcome = %s WHERE id = %s",
                [(outcome, row_id) for row_id, outcome in outcomes],
            )

    await db.run(work)
    return [None] * len(outcomes)


async def begin_attempts(db: Database, row_ids: Sequence[int]) -> list[int]:
    """Count one more forwarding attempt of each row, in one statement; the new counts."""

    result = await db.execute(
        "UPDATE messages SET attempts = attempts + 1 WHERE id = ANY(%s) RETURNING id, attempts",
        (list(row_ids),),
    )
    counts = {int(r[0]): int(r[1]) for r in result.rows}
    return [counts.get(row_id, 0) for row_id in row_ids]


async def quarantine(db: Database, row_id: int, reason: str) -> None:
    """Give up on a stored message for a reason that will not go away; the agent moves on."""

    def work(conn: Connection) -> None:
        conn.execute(
            "UPDATE messages SET status = 'quarantined', error = %s, handled_at = now(),"
            " outcome = %s WHERE id = %s",
            (reason[:1000], f"quarantined:{reason[:200]}", row_id),
        )

    await db.run(work)


async def unhandled_inbound(
    db: Database, agent_uuid: uuid.UUID, max_age: float
) -> tuple[list[StoredInbound], int]:
    """Inbound messages persisted but not yet taken up (never answered), younger than
    ``max_age`` seconds, oldest first; and how many older ones were given up now (handled,
    outcome ``expired``), so none stays open for ever unnoticed."""

    def work(conn: Connection) -> tuple[list[StoredInbound], int]:
        expired = conn.execute(
            "UPDATE messages SET handled_at = now(), outcome = 'expired' WHERE agent_id = %s"
            " AND direction = 'inbound' AND handled_at IS NULL AND status = 'received'"
            " AND created_at <= now() - make_interval(secs => %s)",
            (agent_uuid, max_age),
        ).rowcount
        rows = conn.execute(
            "SELECT id, payload, trace_id FROM messages WHERE agent_id = %s AND direction = 'inbound'"
            " AND handled_at IS NULL AND status = 'received' AND payload IS NOT NULL"
            " AND created_at > now() - make_interval(secs => %s) ORDER BY created_at, id",
            (agent_uuid, max_age),
        ).fetchall()
        return [StoredInbound(int(r[0]), structure_inbound(r[1]), r[2]) for r in rows], expired

    return await db.run(work)


async def insert_outbound(
    db: Database,
    agent_uuid: uuid.UUID,
    *,
    chat: str,
    type: str,
    text: str | None,
    wa_message_id: str,
    timestamp_ms: int,
    quoted_id: str | None = None,
    media: dict[str, object] | None = None,
    trace_id: str | None = None,
) -> int:
    sent_at = datetime.fromtimestamp(timestamp_ms / 1000, UTC)

    def work(conn: Connection) -> int:
        row = conn.execute(
            "INSERT INTO messages (agent_id, direction, type, chat_jid, text, quoted_id, media,"
            " wa_message_id, status, trace_id, sent_at, is_group)"
            " VALUES (%s, 'outbound', %s, %s, %s, %s, %s, %s, 'sent', %s, %s, %s) RETURNING id",
            (
                agent_uuid,
                type,
                chat,
                text,
                quoted_id,
                Jsonb(media) if media else None,
                wa_message_id,
                trace_id,
                sent_at,
                is_group(chat),
            ),
        ).fetchone()
        assert row is not None
        return int(row[0])

    return await db.run(work)


async def count_messages(db: Database, agent_uuid: uuid.UUID, direction: str) -> int:
    def work(conn: Connection) -> int:
        row = conn.execute(
            "SELECT count(*) FROM messages WHERE agent_id = %s AND direction = %s",
            (agent_uuid, direction),
        ).fetchone()
        return int(row[0]) if row else 0

    return await db.run(work)


@attrs.frozen
class StoredMessage:
    """What a quote needs of a stored message."""

    direction: str
    chat: str | None
    sender: str | None
    text: str | None


async def find_by_wa_id(
    db: Database, agent_uuid: uuid.UUID, wa_message_id: str
) -> StoredMessage | None:
    """The newest stored message (either direction) with this WhatsApp id."""

    def work(conn: Connection) -> StoredMessage | None:
        row = conn.execute(
            "SELECT direction, chat_jid, sender_jid, text FROM messages WHERE agent_id = %s"
            " AND wa_message_id = %s ORDER BY id DESC LIMIT 1",
            (agent_uuid, wa_message_id),
        ).fetchone()
        return None if row is None else StoredMessage(*row)

    return await db.run(work)

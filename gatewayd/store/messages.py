"""The messages table: every inbound message (persisted before anything else is done
with it) and every message the daemon sent."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import attrs
import cattrs
from psycopg.types.json import Jsonb

from gatewayd.store.db import Connection, Database
from gatewayd.whatsapp.port import InboundMessage

_converter = cattrs.Converter()


@attrs.frozen
class StoredInbound:
    """An inbound message with its row id, as the forwarder receives it."""

    row_id: int
    message: InboundMessage
    trace_id: str | None = None


def _type_of(message: InboundMessage) -> str:
    return message.media_type or "text"


async def insert_inbound(
    db: Database, agent_uuid: uuid.UUID, message: InboundMessage, trace_id: str | None = None
) -> int | None:
    """Persist a received message; the row id, or None when WhatsApp redelivered one
    already stored (the unique (agent, direction, wa id) key)."""
    payload = _converter.unstructure(message)
    received = datetime.fromtimestamp(message.timestamp_ms / 1000, UTC)

    def work(conn: Connection) -> int | None:
        row = conn.execute(
            "INSERT INTO messages (agent_id, direction, type, chat_jid, chat_lid, sender_jid, sender_lid,"
            " is_group, push_name, text, quoted_id, media, wa_message_id, status, trace_id, received_at,"
            " payload, mentioned_jids)"
            " VALUES (%s, 'inbound', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'received', %s, %s, %s, %s)"
            " ON CONFLICT (agent_id, direction, wa_message_id) DO NOTHING RETURNING id",
            (
                agent_uuid,
                _type_of(message),
                message.chat,
                message.chat_lid,
                message.sender,
                message.sender_lid,
                message.is_group,
                message.push_name,
                message.text,
                message.quoted_id,
                Jsonb(payload["media"]) if message.media else None,
                message.id,
                trace_id,
                received,
                Jsonb(payload),
                list(message.mentioned_jids),
            ),
        ).fetchone()
        return None if row is None else int(row[0])

    return await db.run(work)


async def mark_handled(db: Database, row_id: int, outcome: str) -> None:
    def work(conn: Connection) -> None:
        conn.execute(
            "UPDATE messages SET handled_at = now(), outcome = %s WHERE id = %s", (outcome, row_id)
        )

    await db.run(work)


async def unhandled_inbound(
    db: Database, agent_uuid: uuid.UUID, max_age: float
) -> list[StoredInbound]:
    """Inbound messages persisted but not yet handled, younger than ``max_age`` seconds, oldest first."""

    def work(conn: Connection) -> list[StoredInbound]:
        rows = conn.execute(
            "SELECT id, payload, trace_id FROM messages WHERE agent_id = %s AND direction = 'inbound'"
            " AND handled_at IS NULL AND payload IS NOT NULL"
            " AND created_at > now() - make_interval(secs => %s) ORDER BY created_at, id",
            (agent_uuid, max_age),
        ).fetchall()
        return [
            StoredInbound(int(r[0]), _converter.structure(r[1], InboundMessage), r[2]) for r in rows
        ]

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
                chat.endswith("@g.us"),
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

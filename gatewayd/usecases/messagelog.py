"""The message log of one session: ``GET /api/v1/sessions/{id}/messages``
(docs/contract/api-v1.md §7.10).

Newest first, in pages: the order is the row's recorded time and id, ``(created_at, id)``,
and a page ends where the next begins with a keyset cursor — rows stored meanwhile never
shift a page, nothing is skipped or repeated. The cursor is opaque to clients (base64url of a
small JSON object); one that does not decode to a position is ``InvalidPayload``. ``since``
and ``until`` bound the same recorded time, so they agree with the order.

The caller passes a record it got from an owned lookup (gatewayd/store/owned.py): this module
reads only that agent's rows.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import attrs

from gatewayd.errors import InvalidPayload
from gatewayd.jid import group_id_of, is_group, lid_of, phone_of
from gatewayd.store.agents import AgentRecord
from gatewayd.store.db import Connection, Database

__all__ = [
    "DEFAULT_LIMIT",
    "Direction",
    "LogStatus",
    "MAX_LIMIT",
    "TYPES",
    "LogEntry",
    "MessagePage",
    "MessageQuery",
    "decode_cursor",
    "encode_cursor",
    "message_log",
]

Direction = Literal["incoming", "outgoing"]
LogStatus = Literal[
    "queued", "sending", "sent", "delivered", "read", "failed", "unknown", "received"
]

#: The ``type`` values a client may filter by (§7.10); ``other`` rows are listed, not filtered.
TYPES = ("text", "image", "document", "audio", "video", "sticker", "location", "contact")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
# A real cursor is about 60 characters; anything much longer is not ours.
_MAX_CURSOR = 256
_MAX_ROW_ID = 2**63 - 1

_DIRECTION_OF_ROW: dict[str, Direction] = {"inbound": "incoming", "outbound": "outgoing"}
_ROW_DIRECTION = {v: k for k, v in _DIRECTION_OF_ROW.items()}

# An outbound row's status (sql/003_durability.up.sql) in the log's words: a pending API send
# is queued like a reply; an expired reply was never sent, so it failed.
_OUTBOUND_STATUS: dict[str, LogStatus] = {
    "queued": "queued",
    "pending": "queued",
    "sending": "sending",
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "failed": "failed",
    "expired": "failed",
    "unknown": "unknown",
}


def _utc(value: datetime | None) -> datetime | None:
    """Times without a zone are read as UTC, as every /api/v1 time is written."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _invalid(field: str, message: str) -> InvalidPayload:
    return InvalidPayload(message, details={"field": field})


@attrs.frozen(kw_only=True)
class MessageQuery:
    """What the log is asked for; every field optional. Out-of-range values raise
    ``InvalidPayload`` naming the field."""

    direction: Direction | None = None
    type: str | None = None
    #: Inclusive lower bound of the recorded time.
    since: datetime | None = attrs.field(default=None, converter=_utc)
    #: Exclusive upper bound of the recorded time.
    until: datetime | None = attrs.field(default=None, converter=_utc)
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.direction is not None and self.direction not in get_args(Direction):
            raise _invalid("direction", "direction must be 'incoming' or 'outgoing'")
        if self.type is not None and self.type not in TYPES:
            raise _invalid("type", f"type must be one of: {', '.join(TYPES)}")
        if type(self.limit) is not int or not 1 <= self.limit <= MAX_LIMIT:
            raise _invalid("limit", f"limit must be a whole number from 1 to {MAX_LIMIT}")


@attrs.frozen(kw_only=True)
class LogEntry:
    """One message as the log shows it. Parties appear as phone digits and LID digits, each
    None when unknown; the agent's own are its current ones (a session paired again with
    another number shows that number on its older messages too)."""

    #: The WhatsApp id; None for a send that never reached WhatsApp.
    #: The stored row (what a media link names).
    row_id: int
    message_id: str | None
    direction: Direction
    type: str
    from_: str | None
    from_lid: str | None
    #: The sender's push name (incoming only).
    from_name: str | None
    to: str | None
    to_lid: str | None
    content: str | None
    is_group: bool
    #: The group's JID (``…@g.us``) when the chat is a group.
    group_id: str | None
    quoted_message_id: str | None
    status: LogStatus
    #: When gatewayd recorded the message (the log's order).
    timestamp: datetime


@attrs.frozen
class MessagePage:
    messages: list[LogEntry]
    #: Where the next page starts; None on the last page.
    next_cursor: str | None


def encode_cursor(created_at: datetime, row_id: int) -> str:
    """The opaque position just after a row, in the log's order."""
    raw = json.dumps({"t": created_at.isoformat(), "i": row_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The position a cursor names, or ``InvalidPayload`` for anything that is not a cursor
    this module wrote (garbled, truncated, forged to another shape)."""
    bad = _invalid("cursor", "cursor is not valid: pass next_cursor from the previous page")
    if not cursor or len(cursor) > _MAX_CURSOR or not cursor.isascii():
        raise bad
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        value: Any = json.loads(raw)
    except (binascii.Error, ValueError):  # JSONDecodeError and UnicodeDecodeError included
        raise bad from None
    if not isinstance(value, dict) or set(value) != {"t", "i"}:
        raise bad
    stamp, row_id = value["t"], value["i"]
    if not isinstance(stamp, str) or type(row_id) is not int or not 0 < row_id <= _MAX_ROW_ID:
        raise bad
    try:
        created_at = datetime.fromisoformat(stamp)
    except ValueError:
        raise bad from None
    if created_at.tzinfo is None:
        raise bad
    return created_at, row_id


_SELECT = (
    "SELECT id, direction, type, wa_message_id, chat_jid, chat_lid, sender_jid, sender_lid,"
    " is_group, push_name, text, quoted_id, status, created_at FROM messages"
)


def _where(agent: AgentRecord, query: MessageQuery) -> tuple[str, list[Any]]:
    # Fixed fragments only; every value is a parameter.
    clauses: list[str] = ["agent_id = %s"]
    params: list[Any] = [agent.id]
    if query.direction is not None:
        clauses.append("direction = %s")
        params.append(_ROW_DIRECTION[query.direction])
    if query.type is not None:
        clauses.append("type = %s")
        params.append(query.type)
    if query.since is not None:
        clauses.append("created_at >= %s")
        params.append(query.since)
    if query.until is not None:
        clauses.append("created_at < %s")
        params.append(query.until)
    if query.cursor is not None:
        clauses.append("(created_at, id) < (%s, %s)")
        params.extend(decode_cursor(query.cursor))
    return " AND ".join(clauses), params


def _lid_digits(value: str | None) -> str | None:
    """Digits of a LID given as a JID (``…@lid``) or already as digits."""
    if value is None:
        return None
    return value if value.isdigit() else lid_of(value)


def _party(jid: str | None, lid: str | None) -> tuple[str | None, str | None]:
    """Phone digits and LID digits of a party from its JID and its LID JID, as far as known."""
    if not jid or is_group(jid):
        return None, _lid_digits(lid)
    return phone_of(jid), _lid_digits(lid) or lid_of(jid)


def _entry(agent: AgentRecord, row: tuple[Any, ...]) -> LogEntry:
    (row_id, direction, type_, wa_id, chat, chat_lid, sender, sender_lid, group, push_name, text,
     quoted_id, status, created_at) = row  # fmt: skip
    me = (agent.phone_number, _lid_digits(agent.lid))
    if direction == "inbound":
        sender_party = _party(sender, sender_lid)
        (from_, from_lid), (to, to_lid) = sender_party, me
        log_status: LogStatus = "received"
    else:
        (from_, from_lid), (to, to_lid) = me, _party(chat, chat_lid)
        log_status = _OUTBOUND_STATUS.get(status or "", "unknown")
    return LogEntry(
        row_id=row_id,
        message_id=wa_id,
        direction=_DIRECTION_OF_ROW[direction],
        type=type_,
        from_=from_,
        from_lid=from_lid,
        from_name=push_name if direction == "inbound" else None,
        to=to,
        to_lid=to_lid,
        content=text,
        is_group=bool(group),
        group_id=group_id_of(chat) if group and chat else None,
        quoted_message_id=quoted_id,
        status=log_status,
        timestamp=created_at,
    )


async def message_log(db: Database, agent: AgentRecord, query: MessageQuery) -> MessagePage:
    """One page of the agent's messages, newest first, and the cursor of the next page."""
    where, params = _where(agent, query)  # a bad cursor fails here, before the database
    sql = f"{_SELECT} WHERE {where} ORDER BY created_at DESC, id DESC LIMIT %s"

    def work(conn: Connection) -> list[tuple[Any, ...]]:
        return conn.execute(sql.encode(), (*params, query.limit + 1)).fetchall()

    rows = await db.run(work)
    page = rows[: query.limit]
    next_cursor = None
    if len(rows) > query.limit:
        last = page[-1]
        next_cursor = encode_cursor(last[13], int(last[0]))
    return MessagePage([_entry(agent, row) for row in page], next_cursor)

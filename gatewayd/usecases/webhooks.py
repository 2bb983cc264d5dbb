"""What a session's webhook is sent: the events, their payloads, the per-session secret.

Every event has the envelope of docs/contract/api-v1.md §12.2 — ``event``, ``session_id``,
``session_name``, ``timestamp`` (when it happened, ISO 8601 UTC) — and one part of its own:

* ``message.received`` (the default), ``message.edited``: ``message`` as in §12.2 (an edit
  adds ``edited_id``, the id of the message it changes);
* ``message.sent``: ``message {id, to, type, content}``;
* ``message.ack``: ``ack {type, chat, message_ids}`` (``delivered``, ``read``, ``played`` …);
* ``session.status``: ``session {status, status_detail, reason, phone_number}`` (``status``
  in the dashboard's words, §6);
* ``webhook.test``: ``test {message}`` (``POST …/webhook/test``, whatever is subscribed).

``message.revoked`` is not offered: the WhatsApp port (gatewayd/whatsapp/port.py) does not
report revokes.

Inbound messages are filtered exactly as the AI forwarder filters them
(gatewayd/nursery/forwarder.py ``ignore_reason``), except that media messages are delivered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from gatewayd.jid import group_id_of, is_lid, lid_jid, lid_of, phone_jid, phone_of
from gatewayd.nursery.forwarder import ignore_reason
from gatewayd.nursery.mentions import mentions_agent
from gatewayd.outbound.webhook import new_webhook_secret
from gatewayd.store import webhooks as webhooks_store
from gatewayd.store.agents import AgentRecord
from gatewayd.store.db import Database
from gatewayd.store.webhooks import NewDelivery
from gatewayd.whatsapp.port import InboundMessage

RECEIVED = "message.received"
EDITED = "message.edited"
SENT = "message.sent"
ACK = "message.ack"
STATUS = "session.status"
TEST = "webhook.test"
#: What a session may subscribe to (``agents.webhook_events``).
EVENTS: tuple[str, ...] = (RECEIVED, EDITED, SENT, ACK, STATUS)
DEFAULT_EVENTS: tuple[str, ...] = (RECEIVED,)

__all__ = ["EVENTS", "DEFAULT_EVENTS", "MediaUrl", "new_webhook_secret", "inbound_delivery"]

#: The link to a received message's media, when one can be given (another part of the daemon
#: serves media); None: ``media_url`` is null.
MediaUrl = Callable[[AgentRecord, InboundMessage], "str | None"]


def no_media_url(record: AgentRecord, message: InboundMessage) -> str | None:
    return None


def subscribed(record: AgentRecord, event: str) -> bool:
    """Whether ``record``'s webhook is sent ``event``."""
    return bool(record.webhook_url) and event in record.webhook_events


def unknown_events(events: Sequence[str]) -> list[str]:
    """The names in ``events`` that are no event (for validating a session's settings)."""
    return [event for event in events if event not in EVENTS]


def iso(timestamp_ms: int | float | None = None) -> str:
    """``timestamp_ms`` (default: now) as ISO 8601 UTC with a ``Z``."""
    when = (
        datetime.now(UTC)
        if timestamp_ms is None or not 0 <= timestamp_ms < 253_402_300_799_000
        else datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    )
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def envelope(record: AgentRecord, event: str, timestamp: str | None = None) -> dict[str, Any]:
    return {
        "event": event,
        "session_id": str(record.id),
        "session_name": record.name,
        "timestamp": timestamp or iso(),
    }


def _own_jids(record: AgentRecord) -> set[str]:
    jids = set()
    if record.phone_number:
        jids.add(phone_jid(record.phone_number))
    if record.lid:
        jids.add(lid_jid(record.lid))
    return jids


def inbound_delivery(
    record: AgentRecord,
    message: InboundMessage,
    *,
    default_country_code: str,
    media_url: MediaUrl = no_media_url,
) -> NewDelivery | None:
    """The delivery a newly stored inbound message makes for ``record``'s webhook, or None."""
    if not record.webhook_url:
        return None
    own_jids = _own_jids(record)
    reason = ignore_reason(
        message,
        own_jids=own_jids,
        own_phone=record.phone_number,
        default_country_code=default_country_code,
    )
    event = RECEIVED
    if reason == "edit":
        event = EDITED
    elif reason not in (None, "media"):
        return None
    if event not in record.webhook_events:
        return None
    is_mention = message.is_group and mentions_agent(
        message,
        own_jids=own_jids,
        own_phone=record.phone_number,
        default_country_code=default_country_code,
    )
    payload = envelope(record, event, iso(message.timestamp_ms))
    payload["message"] = message_part(record, message, is_mention, media_url(record, message))
    if event == EDITED:
        payload["message"]["edited_id"] = message.edited_id
    return NewDelivery(event, payload)


def _digits(jid: str | None) -> tuple[str | None, str | None]:
    """(phone digits, LID digits) of a user JID."""
    if not jid:
        return None, None
    return phone_of(jid), lid_of(jid)


def message_part(
    record: AgentRecord, message: InboundMessage, is_mention: bool, media_url: str | None
) -> dict[str, Any]:
    """The ``message`` object of docs/contract/api-v1.md §12.2 (plus ``from_lid``)."""
    phone, lid = _digits(message.sender)
    if lid is None and message.sender_lid:
        lid = lid_of(message.sender_lid)
    quoted = None
    if message.quoted_id:
        q_phone, q_lid = _digits(message.quoted_sender)
        quoted = {
            "id": message.quoted_id,
            "from": q_phone or q_lid,
            "content": message.quoted_text,
            # The port reports the quoted text only: what else it was is not known here.
            "type": "text" if message.quoted_text is not None else None,
        }
    group_id = None
    if message.is_group:
        # The id part of ``…@g.us`` (parsing, not building, a JID).
        group_id = group_id_of(message.chat)
    return {
        "id": message.id,
        "from": phone,
        "from_lid": lid,
        "from_name": message.push_name,
        "to": record.phone_number,
        "type": message.media_type or "text",
        "content": message.text,
        "media_url": media_url,
        "is_group": message.is_group,
        "group_id": group_id,
        "group_name": None,  # the port does not report group names
        "is_mention": bool(is_mention),
        "quoted_message": quoted,
    }


def sent_delivery(
    record: AgentRecord, *, message_id: str, to: str, kind: str, text: str | None, timestamp_ms: int
) -> NewDelivery:
    payload = envelope(record, SENT, iso(timestamp_ms))
    phone = phone_of(to)
    payload["message"] = {
        "id": message_id,
        "to": phone or (lid_of(to) if is_lid(to) else to),
        "type": kind,
        "content": text,
    }
    return NewDelivery(SENT, payload)


def ack_delivery(
    record: AgentRecord, *, chat: str, message_ids: Sequence[str], type: str, timestamp_ms: int
) -> NewDelivery:
    payload = envelope(record, ACK, iso(timestamp_ms))
    payload["ack"] = {
        "type": type,
        "chat": phone_of(chat) or chat,
        "message_ids": list(message_ids),
    }
    return NewDelivery(ACK, payload)


#: gatewayd's statuses in the dashboard's words (docs/contract/api-v1.md §6).
_DASHBOARD_STATUS = {"awaiting_qr": "qr", "connected": "connected"}


def status_delivery(record: AgentRecord, *, status: str, reason: str | None) -> NewDelivery:
    payload = envelope(record, STATUS)
    payload["session"] = {
        "status": _DASHBOARD_STATUS.get(status, "disconnected"),
        "status_detail": status,
        "reason": reason,
        "phone_number": record.phone_number,
    }
    return NewDelivery(STATUS, payload)


def test_delivery(record: AgentRecord) -> NewDelivery:
    payload = envelope(record, TEST)
    payload["test"] = {"message": "A test delivery from gatewayd: your webhook is reachable."}
    return NewDelivery(TEST, payload)


async def enqueue_test(db: Database, record: AgentRecord) -> int:
    """Queue a ``webhook.test`` delivery for ``record``'s webhook; its delivery id.

    The dispatcher takes it up like any other (signed, retried, listed)."""
    delivery_id = await webhooks_store.enqueue(db, record.id, test_delivery(record))
    assert delivery_id is not None  # only message deliveries are deduplicated
    return delivery_id

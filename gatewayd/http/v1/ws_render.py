"""How the WebSocket writes events: ``qr_update``, ``status_update`` and ``message_received``
frames from the agents' state and the events bus (docs/contract/api-v1.md §11).

Every frame is ``{"type", "session_id", "data", "timestamp"}``; ``timestamp`` is when it
happened (a message's own time for ``message_received``). Texts come from WhatsApp: frames are
written with ASCII escapes, so a lone surrogate in a message never breaks the socket.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import trio

from gatewayd.http.v1.common import iso
from gatewayd.http.v1.render import dashboard_status, expires_in, qr_data_url
from gatewayd.jid import group_id_of, lid_jid, lid_of, phone_jid, phone_of
from gatewayd.nursery.mentions import mentions_agent
from gatewayd.store.agents import AgentRecord
from gatewayd.usecases.sessions import SessionState
from gatewayd.whatsapp.port import InboundMessage, QrCode
from gatewayd.whatsapp.qr import QrSnapshot, QrState


def now() -> str:
    return iso(datetime.now(UTC)) or ""


def frame(
    kind: str, record: AgentRecord, data: dict[str, Any], timestamp: str | None = None
) -> str:
    body = {
        "type": kind,
        "session_id": str(record.id),
        "data": data,
        "timestamp": timestamp or now(),
    }
    return json.dumps(body, ensure_ascii=True, separators=(",", ":"), default=str)


def ping() -> str:
    """The idle heartbeat: keeps proxies from closing a quiet socket, and gives the kernel
    data in flight, without which a vanished peer is never noticed."""
    return json.dumps({"type": "ping", "timestamp": now()}, separators=(",", ":"))


def status_update(record: AgentRecord, status: str) -> str:
    data = {
        "status": dashboard_status(status),
        "status_detail": status,
        "phone_number": record.phone_number,
        "device_info": record.device_info,
    }
    return frame("status_update", record, data)


async def current_qr(record: AgentRecord, state: SessionState) -> str | None:
    """The QR showing now, as a frame; None when there is none."""
    snapshot = state.qr if state.status == "awaiting_qr" else None
    if snapshot is None:
        return None
    code = await qr_data_url(snapshot, state.qr_state)
    data = {"qr_code": code, "expires_in": expires_in(snapshot)}
    return frame("qr_update", record, data)


async def qr_update(record: AgentRecord, data: dict[str, Any], state: QrState | None) -> str | None:
    """A bus ``qr`` event as a frame (the agent's rendered PNG when it is still the latest)."""
    payload = data.get("payload")
    if not isinstance(payload, str) or not payload:
        return None
    created_at = float(data.get("createdAt") or trio.current_time())
    lifetime = float(data.get("expiresIn") or 0.0)
    latest = state.latest if state is not None else None
    if latest is None or latest.payload != payload:
        latest = QrSnapshot(QrCode(payload, int(data.get("index") or 0), lifetime), created_at)
    code = await qr_data_url(latest, state)
    if code is None:
        return None
    data = {"qr_code": code, "expires_in": expires_in(latest)}
    return frame("qr_update", record, data)


def _text(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def message_received(record: AgentRecord, data: dict[str, Any], country_code: str) -> str:
    """A bus ``message`` event as seed 003's ``message_received``; ``from_lid``, ``is_group``
    and ``group_id`` are ours."""
    sender = _text(data, "sender") or ""
    sender_lid = _text(data, "senderLid")
    chat = _text(data, "chat") or sender
    is_group = bool(data.get("isGroup"))
    mentioned = tuple(j for j in data.get("mentionedJids") or () if isinstance(j, str))
    text = _text(data, "text")
    message = InboundMessage(
        id=_text(data, "id") or "",
        chat=chat,
        sender=sender,
        timestamp_ms=0,
        is_group=is_group,
        text=text,
        mentioned_jids=mentioned,
    )
    own_jids = set()
    if record.phone_number:
        own_jids.add(phone_jid(record.phone_number))
    if record.lid:
        own_jids.add(lid_jid(record.lid))
    is_mention = is_group and mentions_agent(
        message, own_jids=own_jids, own_phone=record.phone_number, default_country_code=country_code
    )
    quoted_id = _text(data, "quotedId")
    quoted = None
    if quoted_id:
        quoted_text = _text(data, "quotedText")
        quoted = {
            "id": quoted_id,
            "from": phone_of(_text(data, "quotedSender") or ""),
            "content": quoted_text,
            "type": "text" if quoted_text is not None else None,
        }
    body = {
        "message_id": message.id,
        "from": phone_of(sender),
        "from_lid": lid_of(sender_lid or sender),
        "from_name": _text(data, "pushName"),
        "type": _text(data, "mediaType") or "text",
        "content": text,
        "is_group": is_group,
        "group_id": group_id_of(chat) if is_group else None,
        "is_mention": is_mention,
        "mentioned_numbers": [n for n in map(phone_of, mentioned) if n is not None],
        "quoted_message": quoted,
    }
    millis = data.get("timestampMs")
    when = (
        iso(datetime.fromtimestamp(millis / 1000, UTC))
        if isinstance(millis, int) and not isinstance(millis, bool) and 0 < millis < 2**42
        else None
    )
    return frame("message_received", record, body, when)

"""Messaging use cases of the agents API: send text, send an image, run the AI.

Everything about a request is validated (body, recipient, media size and type, URL
address) before the session's readiness is checked, so a bad request gets its own
4xx whatever state the session is in.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from gatewayd.errors import GatewayError, InvalidPayload
from gatewayd.jid import normalize_recipient, to_contract_jid
from gatewayd.nursery.cleanup import PREVIEW_PREFIX
from gatewayd.nursery.commands import Outgoing, Sent
from gatewayd.nursery.forwarder import ai_call
from gatewayd.outbound.ai import parse_run_request
from gatewayd.outbound.media import decode_base64_media, fetch_media, sniff_image
from gatewayd.store.agents import AgentRecord
from gatewayd.store.messages import find_by_wa_id
from gatewayd.whatsapp.port import Quote

if TYPE_CHECKING:
    from gatewayd.nursery.supervisor import Gateway

_SERIALIZED_ID = re.compile(r"^(true|false)_([^_]+@[a-z.]+)_([A-Za-z0-9]+)(?:_.*)?$")
_EXT = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp"}


def _text(
    body: dict[str, Any], key: str, *, required: bool = True, limit: int = 65536
) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidPayload(f"'{key}' must be a non-empty string")
    if len(value) > limit:
        raise InvalidPayload(f"'{key}' is longer than {limit} characters")
    return value


def recipient(gateway: Gateway, body: dict[str, Any], key: str = "to") -> str:
    value = body.get(key)
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise InvalidPayload(f"'{key}' must be a phone number or a JID")
    return normalize_recipient(
        str(value), default_country_code=gateway.config.whatsapp.default_country_code
    )


async def quote_for(gateway: Gateway, record: AgentRecord, chat: str, quote_id: str) -> Quote:
    """A quote from ``quoteId``: whatsapp-web.js's ``true_628…@c.us_ID`` or a bare id."""
    match = _SERIALIZED_ID.match(quote_id)
    message_id = match.group(3) if match else quote_id
    if not re.fullmatch(r"[A-Za-z0-9]{4,64}", message_id):
        raise InvalidPayload("'quoteId' is not a WhatsApp message id")
    stored = await find_by_wa_id(gateway.db, record.id, message_id)
    if stored is not None:
        sender = (
            stored.sender
            if stored.direction == "inbound"
            else f"{record.phone_number}@s.whatsapp.net"
        )
        return Quote(
            message_id=message_id, sender=sender or chat, chat=stored.chat or chat, text=stored.text
        )
    from_me = bool(match and match.group(1) == "true")
    own = f"{record.phone_number}@s.whatsapp.net" if record.phone_number else chat
    return Quote(message_id=message_id, sender=own if from_me else chat, chat=chat)


def sent_body(sent: Sent, to: str) -> dict[str, Any]:
    return {
        "messageId": sent.message_id,
        "id": sent.message_id,
        "to": to_contract_jid(to),
        "timestamp": sent.timestamp_ms,
    }


async def send_text(
    gateway: Gateway,
    record: AgentRecord,
    body: dict[str, Any],
    trace_id: str,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    to = recipient(gateway, body)
    text = _text(body, "message")
    quote = None
    quote_id = _text(body, "quoteId", required=False)
    if quote_id:
        quote = await quote_for(gateway, record, to, quote_id)
    sent = await gateway.agents.send(
        record.agent_id,
        Outgoing(to=to, text=text, quote=quote),
        trace_id,
        idempotency_key=idempotency_key,
    )
    return sent_body(sent, to)


async def send_media(
    gateway: Gateway,
    record: AgentRecord,
    body: dict[str, Any],
    trace_id: str,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    to = recipient(gateway, body)
    media_cfg = gateway.config.media
    caption = _text(body, "caption", required=False)
    filename = _text(body, "filename", required=False, limit=255)
    claimed = body.get("mimetype", body.get("mimeType"))
    if claimed is not None and not isinstance(claimed, str):
        raise InvalidPayload("'mimetype' must be a string")
    save = body.get("save_to_temp", body.get("saveToTemp", True))
    if not isinstance(save, bool):
        raise InvalidPayload("'save_to_temp' must be true or false")
    data, url = body.get("data"), body.get("url")
    if (data is None) == (url is None):
        raise InvalidPayload("Give exactly one of 'data' (base64) or 'url'")
    if data is not None:
        if not isinstance(data, str):
            raise InvalidPayload("'data' must be a base64 string")
        content = decode_base64_media(data, max_bytes=media_cfg.max_bytes)
    else:
        if not isinstance(url, str):
            raise InvalidPayload("'url' must be a string")
        fetched = await fetch_media(
            gateway.http,
            url,
            max_bytes=media_cfg.max_bytes,
            allow_private=media_cfg.allow_private_urls,
        )
        content = fetched.data
        filename = filename or fetched.filename
    mimetype = sniff_image(content)
    if mimetype is None:
        raise InvalidPayload(
            "Only images are accepted (JPEG, PNG, GIF, WebP): the content is not one"
        )
    preview: str | None = None
    if save:
        preview = await _save_preview(Path(media_cfg.temp_dir), record.agent_id, mimetype, content)
    sent = await gateway.agents.send(
        record.agent_id,
        Outgoing(
            to=to, kind="image", text=caption, data=content, mimetype=mimetype, filename=filename
        ),
        trace_id,
        idempotency_key=idempotency_key,
    )
    result = sent_body(sent, to)
    result.update({"mimetype": mimetype, "size": len(content), "previewPath": preview})
    if claimed and claimed != mimetype:
        result["claimedMimetype"] = claimed
    return result


async def _save_preview(directory: Path, agent_id: str, mimetype: str, content: bytes) -> str:
    safe_agent = re.sub(r"[^A-Za-z0-9_.-]", "_", agent_id)[:64]
    path = directory / f"{PREVIEW_PREFIX}{safe_agent}-{uuid.uuid4().hex}.{_EXT[mimetype]}"

    def write() -> None:
        directory.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(0o600)

    await trio.to_thread.run_sync(write)
    return str(path)


async def run_ai(
    gateway: Gateway, record: AgentRecord, body: dict[str, Any], trace_id: str
) -> dict[str, Any]:
    """POST /agents/{agentId}/run: call the AI; send its reply to the session JID."""
    request = parse_run_request(
        body, default_country_code=gateway.config.whatsapp.default_country_code
    )
    answer = await ai_call(gateway, record, request.payload(), trace_id=trace_id)
    result: dict[str, Any] = dict(answer.body)
    result["replySent"] = False
    if answer.reply and request.session_jid:
        try:
            sent = await gateway.agents.send(
                record.agent_id, Outgoing(to=request.session_jid, text=answer.reply), trace_id
            )
            result["replySent"] = True
            result["messageId"] = sent.message_id
        except GatewayError as exc:
            # The AI answered; only the WhatsApp side failed: say so, keep the answer.
            result["replyError"] = exc.message
    return result

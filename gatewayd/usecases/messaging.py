"""Messaging use cases: send text, send media, run the AI for a session.

Inputs arrive parsed (the HTTP edge checked their shape); what is checked here needs the
daemon: the recipient's normal form, the quoted message, the media's size and content, the
URL's address. All of it happens before the session's readiness is looked at, so a bad request
gets its own 4xx whatever state the session is in.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import attrs
import trio

from gatewayd.errors import GatewayError, InvalidPayload, MediaTooLarge
from gatewayd.jid import normalize_recipient, phone_jid
from gatewayd.nursery.cleanup import PREVIEW_PREFIX
from gatewayd.nursery.commands import Outgoing, SendKind, Sent
from gatewayd.outbound.ai import RunRequest
from gatewayd.outbound.media import fetch_media, sniff_image
from gatewayd.store.agents import AgentRecord
from gatewayd.store.messages import find_by_wa_id
from gatewayd.usecases.core import Services
from gatewayd.whatsapp.port import Quote

_SERIALIZED_ID = re.compile(r"^(true|false)_([^_]+@[a-z.]+)_([A-Za-z0-9]+)(?:_.*)?$")
_EXT = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp"}
_DEFAULT_MIMETYPE: dict[str, str] = {
    "document": "application/octet-stream",
    "audio": "audio/ogg",
    "video": "video/mp4",
}


@attrs.frozen
class TextMessage:
    to: str  # a number or JID as the client wrote it
    text: str
    quote_id: str | None = None


@attrs.frozen
class MediaMessage:
    """Media from base64 (``data``) or a URL (exactly one of them)."""

    to: str
    kind: SendKind = "image"
    data: bytes | None = attrs.field(default=None, repr=False)
    url: str | None = None
    caption: str | None = None
    filename: str | None = None
    claimed_mimetype: str | None = None
    save_preview: bool = False
    quote_id: str | None = None


@attrs.frozen
class SentMessage:
    message_id: str
    to: str  # the JID it went to
    timestamp_ms: int
    row_id: int
    mimetype: str | None = None
    size: int | None = None
    preview_path: str | None = None
    claimed_mimetype: str | None = None


@attrs.frozen
class RunResult:
    """The AI's answer to a run, and what became of its reply."""

    body: dict[str, Any]
    reply_sent: bool = False
    message_id: str | None = None
    reply_error: str | None = None


def recipient(services: Services, to: str) -> str:
    return normalize_recipient(
        to, default_country_code=services.config.whatsapp.default_country_code
    )


async def quote_for(services: Services, record: AgentRecord, chat: str, quote_id: str) -> Quote:
    """A quote from ``quoteId``: whatsapp-web.js's ``true_628…@c.us_ID`` or a bare id."""
    match = _SERIALIZED_ID.match(quote_id)
    message_id = match.group(3) if match else quote_id
    if not re.fullmatch(r"[A-Za-z0-9]{4,64}", message_id):
        raise InvalidPayload("The quoted message's id is not a WhatsApp message id")
    stored = await find_by_wa_id(services.db, record.id, message_id)
    own = phone_jid(record.phone_number) if record.phone_number else None
    if stored is not None:
        sender = stored.sender if stored.direction == "inbound" else own
        return Quote(
            message_id=message_id, sender=sender or chat, chat=stored.chat or chat, text=stored.text
        )
    from_me = bool(match and match.group(1) == "true")
    return Quote(message_id=message_id, sender=(own or chat) if from_me else chat, chat=chat)


def _sent(sent: Sent, to: str, **extra: Any) -> SentMessage:
    return SentMessage(sent.message_id, to, sent.timestamp_ms, sent.row_id, **extra)


async def send_text(
    services: Services,
    record: AgentRecord,
    message: TextMessage,
    trace_id: str,
    idempotency_key: str | None = None,
) -> SentMessage:
    to = recipient(services, message.to)
    quote = await quote_for(services, record, to, message.quote_id) if message.quote_id else None
    sent = await services.agents.send(
        record.agent_id,
        Outgoing(to=to, text=message.text, quote=quote),
        trace_id,
        idempotency_key=idempotency_key,
    )
    return _sent(sent, to)


async def send_media(
    services: Services,
    record: AgentRecord,
    message: MediaMessage,
    trace_id: str,
    idempotency_key: str | None = None,
) -> SentMessage:
    to = recipient(services, message.to)
    media_cfg = services.config.media
    filename, fetched_type = message.filename, None
    if message.data is not None:
        content = message.data
        if len(content) > media_cfg.max_bytes:
            raise MediaTooLarge(f"The media is larger than {media_cfg.max_bytes} bytes")
    else:
        if message.url is None:
            raise InvalidPayload("Give exactly one of 'data' (base64) or 'url'")
        fetched = await fetch_media(
            services.http,
            message.url,
            max_bytes=media_cfg.max_bytes,
            allow_private=media_cfg.allow_private_urls,
        )
        content, fetched_type = fetched.data, fetched.content_type
        filename = filename or fetched.filename
    if message.kind == "image":
        mimetype = sniff_image(content)
        if mimetype is None:
            raise InvalidPayload(
                "Only images are accepted (JPEG, PNG, GIF, WebP): the content is not one"
            )
    else:
        mimetype = message.claimed_mimetype or fetched_type or _DEFAULT_MIMETYPE[message.kind]
    quote = await quote_for(services, record, to, message.quote_id) if message.quote_id else None
    preview: str | None = None
    if message.save_preview and message.kind == "image":
        preview = await _save_preview(Path(media_cfg.temp_dir), record.agent_id, mimetype, content)
    sent = await services.agents.send(
        record.agent_id,
        Outgoing(
            to=to,
            kind=message.kind,
            text=message.caption,
            data=content,
            mimetype=mimetype,
            filename=filename,
            quote=quote,
        ),
        trace_id,
        idempotency_key=idempotency_key,
    )
    claimed = message.claimed_mimetype
    return _sent(
        sent,
        to,
        mimetype=mimetype,
        size=len(content),
        preview_path=preview,
        claimed_mimetype=claimed if claimed and claimed != mimetype else None,
    )


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
    services: Services, record: AgentRecord, request: RunRequest, trace_id: str
) -> RunResult:
    """Call the agent's AI; send its reply to the session JID. The session sees the agent
    typing while the AI works, as it does for a forwarded message."""
    handle = services.agents.get(record.agent_id)
    typing = request.session_jid if handle is not None and handle.connected else None
    if typing is not None:
        await _typing(services, record.agent_id, typing, True)
    try:
        answer = await services.ai(record, request.payload(), trace_id=trace_id)
    finally:
        if typing is not None:
            with trio.CancelScope(shield=True):
                await _typing(services, record.agent_id, typing, False)
    if not (answer.reply and request.session_jid):
        return RunResult(dict(answer.body))
    try:
        sent = await services.agents.send(
            record.agent_id, Outgoing(to=request.session_jid, text=answer.reply), trace_id
        )
    except GatewayError as exc:
        # The AI answered; only the WhatsApp side failed: say so, keep the answer.
        return RunResult(dict(answer.body), reply_error=exc.message)
    return RunResult(dict(answer.body), reply_sent=True, message_id=sent.message_id)


async def _typing(services: Services, agent_id: str, chat: str, on: bool) -> None:
    handle = services.agents.get(agent_id)
    if handle is None or not handle.connected:
        return
    try:
        with trio.move_on_after(5):
            await handle.client.set_typing(chat, on)
    except GatewayError:
        pass  # typing is a courtesy: failing to show it never fails the run

"""Commands sent into an agent's task tree, and how a caller awaits their answer.

The agent's command channel *is* its FIFO send queue: a caller ``send_nowait``s a
command (``trio.WouldBlock`` when the queue is full → 429) and awaits the answer on the
command's own one-shot reply channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import attrs
import outcome
import trio

from gatewayd import errors
from gatewayd.errors import IdempotencyConflict
from gatewayd.whatsapp.port import Quote, SendResult

if TYPE_CHECKING:
    from gatewayd.store.outbound import KeyedSend

SendKind = Literal["text", "image", "document", "audio", "video"]


@attrs.frozen(kw_only=True)
class Outgoing:
    """One message to send: text, or media with an optional caption."""

    to: str
    kind: SendKind = "text"
    text: str | None = None
    data: bytes | None = attrs.field(
        default=None, repr=lambda d: f"<{len(d)} bytes>" if d else "None"
    )
    mimetype: str | None = None
    filename: str | None = None
    quote: Quote | None = None
    mentions: Sequence[str] = ()
    ptt: bool = False


@attrs.frozen(kw_only=True)
class Sent:
    """The answer to a send: WhatsApp's id and time, and our row id."""

    message_id: str
    timestamp_ms: int
    row_id: int


@attrs.frozen(kw_only=True)
class SendCommand:
    """An API send: its row (``pending``, written before it was queued) and its message."""

    row_id: int
    message: Outgoing
    reply: trio.MemorySendChannel[outcome.Outcome[Sent]]
    trace_id: str | None = None


def new_send(
    row_id: int, message: Outgoing, trace_id: str | None = None
) -> tuple[SendCommand, trio.MemoryReceiveChannel[outcome.Outcome[Sent]]]:
    reply_send, reply_receive = trio.open_memory_channel[outcome.Outcome[Sent]](1)
    command = SendCommand(row_id=row_id, message=message, reply=reply_send, trace_id=trace_id)
    return command, reply_receive


def result_of(result: SendResult, row_id: int) -> Sent:
    return Sent(message_id=result.message_id, timestamp_ms=result.timestamp_ms, row_id=row_id)


def replay(first: KeyedSend) -> Sent:
    """The answer a retried Idempotency-Key gets: the first send's, never a second send."""
    if first.status == "sent" and first.wa_message_id is not None:
        return Sent(
            message_id=first.wa_message_id,
            timestamp_ms=first.timestamp_ms or 0,
            row_id=first.row_id,
        )
    if first.status == "failed" and first.result and isinstance(first.result.get("error"), dict):
        error = first.result["error"]
        cls = getattr(errors, str(error.get("type")), None)
        if not (isinstance(cls, type) and issubclass(cls, errors.GatewayError)):
            cls = errors.WhatsAppError
        raise cls(str(error.get("message") or "the first send with this key failed"))
    if first.status == "unknown":
        raise IdempotencyConflict(
            "The first send with this Idempotency-Key was interrupted while WhatsApp had it;"
            " it is not sent again (its outcome is unknown)"
        )
    raise IdempotencyConflict("A send with this Idempotency-Key is still in progress")

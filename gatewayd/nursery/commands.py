"""Commands sent into an agent's task tree, and how a caller awaits their answer.

The agent's command channel *is* its FIFO send queue: a caller ``send_nowait``s a
command (``trio.WouldBlock`` when the queue is full → 429) and awaits the answer on the
command's own one-shot reply (``Reply``).
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


class Reply:
    """A send's one answer: the send worker puts it, the caller waits for it.

    It behaves as a memory channel of one slot would, both ends in one object (a send makes
    one of these, so it is kept small): ``send_nowait`` raises ``trio.BrokenResourceError``
    once the caller has left its ``async with`` (it gave up: nobody to tell) and
    ``trio.WouldBlock`` for a second answer.
    """

    __slots__ = ("_answered", "_result", "_closed")

    def __init__(self) -> None:
        self._answered = trio.Event()
        self._result: outcome.Outcome[Sent] | None = None
        self._closed = False

    def send_nowait(self, result: outcome.Outcome[Sent]) -> None:
        if self._closed:
            raise trio.BrokenResourceError("the caller stopped waiting")
        if self._result is not None:
            raise trio.WouldBlock
        self._result = result
        self._answered.set()

    async def receive(self) -> outcome.Outcome[Sent]:
        await self._answered.wait()
        assert self._result is not None
        return self._result

    async def __aenter__(self) -> Reply:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closed = True


@attrs.frozen(kw_only=True)
class SendCommand:
    """An API send: its row (``pending``, written before it was queued) and its message."""

    row_id: int
    message: Outgoing
    reply: Reply
    trace_id: str | None = None


def new_send(
    row_id: int, message: Outgoing, trace_id: str | None = None
) -> tuple[SendCommand, Reply]:
    reply = Reply()
    return SendCommand(row_id=row_id, message=message, reply=reply, trace_id=trace_id), reply


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

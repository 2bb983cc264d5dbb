"""The events bus: per-agent and global subscriptions with bounded buffers.

Publishing never waits. A subscriber whose buffer is full is dropped (its channel is
closed, so its ``async for`` ends) instead of slowing the agent that published.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import structlog
import trio

from gatewayd.whatsapp.port import InboundMessage

log = structlog.get_logger()


@attrs.frozen
class BusEvent:
    """Something that happened to an agent: ``kind`` is e.g. ``status``, ``qr``,
    ``message``, ``sent``; ``data`` is a JSON-able dict."""

    agent_id: str
    kind: str
    data: dict[str, Any]


@attrs.define(eq=False)
class Subscription:
    agent_id: str | None
    send: trio.MemorySendChannel[BusEvent]
    receive: trio.MemoryReceiveChannel[BusEvent]
    dropped: bool = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> BusEvent:
        try:
            return await self.receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None


class EventBus:
    def __init__(self, buffer: int = 256) -> None:
        self.buffer = buffer
        self._by_agent: dict[str, set[Subscription]] = {}
        self._global: set[Subscription] = set()
        self.dropped_total = 0

    @contextmanager
    def subscribe(
        self, agent_id: str | None = None, *, buffer: int | None = None
    ) -> Iterator[Subscription]:
        """Subscribe to one agent's events, or to every agent's with ``None``."""
        send, receive = trio.open_memory_channel[BusEvent](buffer or self.buffer)
        sub = Subscription(agent_id, send, receive)
        group = self._global if agent_id is None else self._by_agent.setdefault(agent_id, set())
        group.add(sub)
        try:
            yield sub
        finally:
            group.discard(sub)
            if agent_id is not None and not group:
                self._by_agent.pop(agent_id, None)
            send.close()
            receive.close()

    def publish(self, event: BusEvent) -> None:
        for sub in [*self._by_agent.get(event.agent_id, ()), *self._global]:
            try:
                sub.send.send_nowait(event)
            except trio.WouldBlock:
                self._drop(sub)
            except trio.ClosedResourceError:
                pass

    def _drop(self, sub: Subscription) -> None:
        sub.dropped = True
        self.dropped_total += 1
        log.warning("gatewayd.bus.subscriber_dropped", subscribedTo=sub.agent_id or "*")
        group = self._global if sub.agent_id is None else self._by_agent.get(sub.agent_id, set())
        group.discard(sub)
        sub.send.close()  # its reader drains what is buffered, then its loop ends

    def subscriber_count(self, agent_id: str | None = None) -> int:
        if agent_id is None:
            return len(self._global)
        return len(self._by_agent.get(agent_id, ()))


def message_event(agent_id: str, row_id: int, message: InboundMessage) -> BusEvent:
    """The live event of a newly stored message."""
    return BusEvent(
        agent_id,
        "message",
        {
            "rowId": row_id,
            "id": message.id,
            "chat": message.chat,
            "sender": message.sender,
            "senderLid": message.sender_lid,
            "pushName": message.push_name,
            "text": message.text,
            "isGroup": message.is_group,
            "isFromMe": message.is_from_me,
            "mediaType": message.media_type,
            "timestampMs": message.timestamp_ms,
            # The WebSocket's message_received names mentions and the quoted message.
            "mentionedJids": list(message.mentioned_jids),
            "quotedId": message.quoted_id,
            "quotedSender": message.quoted_sender,
            "quotedText": message.quoted_text,
        },
    )

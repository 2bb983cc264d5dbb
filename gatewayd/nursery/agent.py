"""One agent's task tree: client loop, event handler, send queue, forwarder.

::

    agent "support-bot"  (its own cancel scope; restarted with backoff if it raises)
      ├── client loop    pair (QR) or connect; reconnect with backoff; stop on terminal events
      ├── event handler  status transitions, QR state, inbound persisted *then* published
      ├── send worker    token bucket → FIFO command channel → WhatsApp → messages table
      └── forwarder      inbound consumer (persisted rows, re-handed after a restart)

The handle outlives its tree: the command channel, the token bucket and the QR state
survive a restart, so a crash never loses what callers queued.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import outcome
import structlog
import trio

from gatewayd.errors import AgentStopped, GatewayError, NotConnected
from gatewayd.nursery.backoff import Backoff
from gatewayd.nursery.bus import BusEvent
from gatewayd.nursery.commands import SendCommand, Sent, result_of
from gatewayd.nursery.ratelimit import TokenBucket
from gatewayd.store import agents as agents_store
from gatewayd.store import messages as messages_store
from gatewayd.store.messages import StoredInbound
from gatewayd.whatsapp.port import (
    ClientEvent,
    ClientOutdated,
    Connected,
    ConnectFailed,
    Disconnected,
    LoggedOut,
    MessageReceived,
    Paired,
    PairingError,
    PairingFailed,
    QrCode,
    Receipt,
    SendResult,
    StreamReplaced,
    TemporaryBan,
    WhatsAppClient,
)
from gatewayd.whatsapp.qr import QrState

if TYPE_CHECKING:
    from gatewayd.nursery.agents import AgentSupervisor

log = structlog.get_logger()

#: What the forwarder does with one persisted inbound message; returns its outcome.
Forward = Callable[["AgentHandle", StoredInbound], Awaitable[str]]


@attrs.define(eq=False)
class AgentHandle:
    """What the supervisor and HTTP hold of a running agent."""

    agent_id: str
    id: uuid.UUID
    record: agents_store.AgentRecord
    client: WhatsAppClient
    commands: trio.MemorySendChannel[SendCommand]
    _commands_receive: trio.MemoryReceiveChannel[SendCommand]
    bucket: TokenBucket
    qr: QrState = attrs.field(factory=QrState)
    status: str = "disconnected"
    status_reason: str | None = None
    connected: bool = False
    cancel_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event = attrs.field(factory=trio.Event)
    #: Set by the client loop when the connection ended for good (terminal event).
    terminal: bool = False
    restarts: int = 0

    @classmethod
    def create(
        cls,
        record: agents_store.AgentRecord,
        client: WhatsAppClient,
        *,
        queue_size: int,
        rate_per_minute: float,
        burst: int,
    ) -> AgentHandle:
        send, receive = trio.open_memory_channel[SendCommand](queue_size)
        return cls(
            agent_id=record.agent_id,
            id=record.id,
            record=record,
            client=client,
            commands=send,
            commands_receive=receive,
            bucket=TokenBucket(rate_per_minute, burst),
            # Unknown until the tree says otherwise: the persisted status may be stale
            # (a crash, a shutdown), and the first transition must always be written.
            status="unknown",
            status_reason=None,
        )

    def queue_depth(self) -> int:
        return self.commands.statistics().current_buffer_used


def _answer(command: SendCommand, result: outcome.Outcome[Sent]) -> None:
    try:
        command.reply.send_nowait(result)
    except (trio.BrokenResourceError, trio.WouldBlock):
        pass  # the caller gave up waiting (timeout, disconnect): nobody to tell


class AgentTree:
    """Runs one agent's tree for the supervisor (shared dependencies live there)."""

    def __init__(self, supervisor: AgentSupervisor, handle: AgentHandle) -> None:
        self.sup = supervisor
        self.handle = handle

    # ------------------------------------------------------------------ lifecycle

    async def run_forever(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The restart loop: an exception anywhere in the tree restarts it with backoff."""
        handle = self.handle
        # The spawning task may be an HTTP request: drop its traceId, bind our agentId,
        # before any child starts, so every line this tree logs carries the agent.
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(agentId=handle.agent_id)
        cfg = self.sup.config().agents
        backoff = Backoff(cfg.restart_initial, cfg.restart_max)
        try:
            with handle.cancel_scope:
                task_status.started()
                log.info("gatewayd.agent.started")
                while True:
                    began = trio.current_time()
                    try:
                        await self._run_tree()
                        return
                    except Exception:
                        handle.restarts += 1
                        self.sup.metrics.agent_restarts.labels(handle.agent_id).inc()
                        log.exception("gatewayd.agent.crashed", restarts=handle.restarts)
                    if trio.current_time() - began > cfg.restart_max:
                        backoff.reset()  # it ran fine for a while: start the schedule over
                    await trio.sleep(backoff.next())
                    log.info("gatewayd.agent.restarting", restarts=handle.restarts)
        finally:
            handle.connected = False
            handle.done.set()
            log.info("gatewayd.agent.stopped")

    async def _run_tree(self) -> None:
        handle = self.handle
        handle.terminal = False
        events_send, events_receive = trio.open_memory_channel[ClientEvent](64)
        inbound_send, inbound_receive = trio.open_memory_channel[StoredInbound](math.inf)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._handle_events, events_receive, inbound_send.clone())
            nursery.start_soon(self._send_worker)
            nursery.start_soon(self._forwarder, inbound_receive)
            # Messages persisted before a crash or restart but never handled go first.
            age = self.sup.config().agents.redeliver_max_age
            for stored in await messages_store.unhandled_inbound(self.sup.db, handle.id, age):
                log.info(
                    "gatewayd.inbound.redelivered", rowId=stored.row_id, messageId=stored.message.id
                )
                inbound_send.send_nowait(stored)
            inbound_send.close()
            async with events_send:
                await self._client_loop(events_send)
            # The connection ended for good: the tree stays up so queued sends are
            # answered and the forwarder finishes; the operator decides what is next.
            await trio.sleep_forever()

    # ------------------------------------------------------------------ client loop

    async def _client_loop(self, events: trio.MemorySendChannel[ClientEvent]) -> None:
        handle = self.handle
        cfg = self.sup.config().agents
        # A backend may need a longer schedule (neonize leaks a DB connection per attempt).
        retry_backoff = getattr(self.sup.backend, "retry_backoff", None)
        backoff = (
            retry_backoff()
            if retry_backoff is not None
            else Backoff(cfg.reconnect_initial, cfg.reconnect_max)
        )
        while True:
            record = handle.record
            if record.device_jid is None:
                await self.set_status("awaiting_qr", None)
                try:
                    paired = await handle.client.pair(events)
                except PairingError as exc:
                    log.warning("gatewayd.agent.pairing_failed", reason=exc.reason)
                    handle.terminal = True
                    return
                await self._store_device(paired)
                continue
            try:
                end = await handle.client.run(record.device_jid, events)
                got_online = True
            except ConnectFailed as exc:
                end, got_online = exc.event, False
            if isinstance(end, LoggedOut):
                await self._forget_device(record.device_jid)
            if end.terminal:
                log.warning("gatewayd.agent.connection_ended", kind=end.kind)
                handle.terminal = True
                return
            if got_online:
                backoff.reset()  # a healthy connection broke: start the schedule over
            delay = backoff.next()
            log.info("gatewayd.agent.reconnecting", delay=round(delay, 3))
            await trio.sleep(delay)

    async def _store_device(self, paired: Paired) -> None:
        handle = self.handle
        lid = paired.lid
        await agents_store.set_device(
            self.sup.db,
            handle.id,
            device_jid=paired.device_jid,
            phone_number=paired.phone,
            lid=lid,
            device_info={"pushName": paired.push_name, "platform": paired.platform},
        )
        handle.record = attrs.evolve(
            handle.record, device_jid=paired.device_jid, phone_number=paired.phone, lid=lid
        )
        log.info("gatewayd.agent.paired", phone=paired.phone)

    async def _forget_device(self, device_jid: str) -> None:
        handle = self.handle
        await self.sup.backend.forget_device(device_jid)
        await agents_store.set_device(self.sup.db, handle.id, device_jid=None)
        handle.record = attrs.evolve(handle.record, device_jid=None)

    # ------------------------------------------------------------------ events

    async def set_status(self, status: str, reason: str | None) -> None:
        """Persist a transition, then publish it. The only writer of an agent's status."""
        handle = self.handle
        if (status, reason) == (handle.status, handle.status_reason):
            return
        previous = handle.status
        await agents_store.set_status(self.sup.db, handle.id, status, reason)
        handle.status, handle.status_reason = status, reason
        log.info("gatewayd.agent.status", status=status, previous=previous, reason=reason)
        self.sup.bus.publish(
            BusEvent(handle.agent_id, "status", {"status": status, "reason": reason})
        )

    async def _handle_events(
        self,
        events: trio.MemoryReceiveChannel[ClientEvent],
        inbound: trio.MemorySendChannel[StoredInbound],
    ) -> None:
        handle = self.handle
        async with inbound:
            async for event in events:
                if isinstance(event, MessageReceived):
                    await self._on_message(event, inbound)
                elif isinstance(event, QrCode):
                    snapshot = handle.qr.publish(event)
                    self.sup.bus.publish(
                        BusEvent(
                            handle.agent_id,
                            "qr",
                            {
                                "payload": event.payload,
                                "index": event.index,
                                "expiresIn": event.expires_in,
                                "createdAt": snapshot.created_at,
                            },
                        )
                    )
                elif isinstance(event, Paired):
                    handle.qr.clear()
                    self.sup.bus.publish(
                        BusEvent(handle.agent_id, "paired", {"phone": event.phone})
                    )
                elif isinstance(event, PairingFailed):
                    handle.qr.clear()
                    await self.set_status("auth_failed", f"pairing_failed:{event.reason}")
                elif isinstance(event, Connected):
                    handle.connected = True
                    await self.set_status("connected", None)
                elif isinstance(event, Disconnected):
                    handle.connected = False
                    await self.set_status("disconnected", event.reason)
                elif isinstance(event, LoggedOut):
                    handle.connected = False
                    await self.set_status("auth_failed", f"logged_out:{event.reason}")
                elif isinstance(event, StreamReplaced):
                    handle.connected = False
                    await self.set_status("disconnected", "stream_replaced")
                elif isinstance(event, TemporaryBan):
                    handle.connected = False
                    await self.set_status(
                        "disconnected", f"temporary_ban:{event.code}:{int(event.expires_in)}s"
                    )
                elif isinstance(event, ClientOutdated):
                    handle.connected = False
                    await self.set_status("disconnected", "client_outdated")
                elif isinstance(event, Receipt):
                    self.sup.bus.publish(
                        BusEvent(
                            handle.agent_id,
                            "receipt",
                            {
                                "chat": event.chat,
                                "messageIds": list(event.message_ids),
                                "type": event.type,
                            },
                        )
                    )

    async def _on_message(
        self, event: MessageReceived, inbound: trio.MemorySendChannel[StoredInbound]
    ) -> None:
        # Persist first: whatsmeow already acknowledged this message to WhatsApp, so from
        # here on the database is the only copy that survives a crash.
        handle, message = self.handle, event.message
        row_id = await messages_store.insert_inbound(self.sup.db, handle.id, message)
        if row_id is None:
            log.info("gatewayd.inbound.duplicate", messageId=message.id)
            return
        self.sup.metrics.messages_received.labels(handle.agent_id).inc()
        self.sup.metrics.wa_messages_received.labels(handle.agent_id).inc()
        self.sup.bus.publish(
            BusEvent(
                handle.agent_id,
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
                },
            )
        )
        await inbound.send(StoredInbound(row_id, message))

    # ------------------------------------------------------------------ sending

    async def _send_worker(self) -> None:
        handle = self.handle
        while True:
            # Take the token before the command: the channel buffer then holds exactly
            # queue_size waiting commands, and the next caller is refused at once.
            await handle.bucket.take()
            command = await handle._commands_receive.receive()
            answered = False
            try:
                with structlog.contextvars.bound_contextvars(traceId=command.trace_id):
                    result = await self._send(command)
                _answer(command, outcome.Value(result))
                answered = True
            except GatewayError as exc:
                log.warning("gatewayd.send.failed", error=exc.message, code=type(exc).__name__)
                _answer(command, outcome.Error(exc))
                answered = True
            finally:
                if not answered:
                    # Cancelled or crashed mid-send: the caller must not wait forever.
                    _answer(command, outcome.Error(AgentStopped("The agent stopped while sending")))

    async def _send(self, command: SendCommand) -> Sent:
        handle, m = self.handle, command.message
        if not handle.connected:
            raise NotConnected("The WhatsApp session is not connected")
        client = handle.client
        result: SendResult
        if m.kind == "text":
            result = await client.send_text(m.to, m.text or "", quote=m.quote, mentions=m.mentions)
        elif m.kind == "image":
            assert m.data is not None
            result = await client.send_image(
                m.to,
                m.data,
                mimetype=m.mimetype or "image/jpeg",
                caption=m.text,
                filename=m.filename,
                quote=m.quote,
            )
        elif m.kind == "document":
            assert m.data is not None
            result = await client.send_document(
                m.to,
                m.data,
                mimetype=m.mimetype or "application/octet-stream",
                filename=m.filename or "document",
                caption=m.text,
                quote=m.quote,
            )
        elif m.kind == "audio":
            assert m.data is not None
            result = await client.send_audio(
                m.to, m.data, mimetype=m.mimetype or "audio/ogg", ptt=m.ptt, quote=m.quote
            )
        else:
            assert m.data is not None
            result = await client.send_video(
                m.to, m.data, mimetype=m.mimetype or "video/mp4", caption=m.text, quote=m.quote
            )
        media: dict[str, Any] | None = None
        if m.data is not None:
            media = {"mimetype": m.mimetype, "filename": m.filename, "size": len(m.data)}
        row_id = await messages_store.insert_outbound(
            self.sup.db,
            handle.id,
            chat=m.to,
            type=m.kind,
            text=m.text,
            wa_message_id=result.message_id,
            timestamp_ms=result.timestamp_ms,
            quoted_id=m.quote.message_id if m.quote else None,
            media=media,
            trace_id=command.trace_id,
        )
        self.sup.metrics.messages_sent.labels(handle.agent_id).inc()
        self.sup.metrics.wa_messages_sent.labels(handle.agent_id).inc()
        log.info("gatewayd.send.sent", messageId=result.message_id, kind=m.kind)
        self.sup.bus.publish(
            BusEvent(
                handle.agent_id,
                "sent",
                {
                    "id": result.message_id,
                    "to": m.to,
                    "kind": m.kind,
                    "timestampMs": result.timestamp_ms,
                    "sentAt": time.time(),
                },
            )
        )
        return result_of(result, row_id)

    # ------------------------------------------------------------------ forwarding

    async def _forwarder(self, inbound: trio.MemoryReceiveChannel[StoredInbound]) -> None:
        async for stored in inbound:
            result = await self.sup.forward(self.handle, stored)
            await messages_store.mark_handled(self.sup.db, stored.row_id, result)
            self.sup.bus.publish(
                BusEvent(
                    self.handle.agent_id,
                    "handled",
                    {
                        "rowId": stored.row_id,
                        "id": stored.message.id,
                        "outcome": result,
                    },
                )
            )

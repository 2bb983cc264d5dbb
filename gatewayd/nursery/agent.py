"""One agent's task tree: client loop, event handler, send queue, forwarder.

::

    agent "support-bot"  (its own cancel scope; restarted with backoff if it raises)
      ├── client loop    pair (QR) or connect; reconnect with backoff; stop on terminal events
      ├── event handler  status transitions, QR state
      ├── send worker    token bucket → FIFO command channel → WhatsApp (API sends)
      ├── outbox         queued rows (AI replies, reports) → WhatsApp, once connected
      └── forwarder      inbound consumer (persisted rows, re-handed after a restart)

Received messages do not pass through the tree's channels: the client hands them to the
daemon's inbound writer, which commits them before the client's callback returns and then
gives the stored row to whichever tree of the agent is running (``AgentHandle.inbound``).
So nothing unpersisted ever waits in a channel here, and a tree restart loses nothing.

Every send is a row before it goes out (gatewayd/store/outbound.py): ``sending`` is written
before WhatsApp gets it and ``sent`` after, so a crash in between leaves ``unknown``.

The handle outlives its tree: the command channel, the token bucket and the QR state
survive a restart, so a crash never loses what callers queued.
"""

from __future__ import annotations

import functools
import hashlib
import math
from typing import TYPE_CHECKING

import attrs
import structlog
import trio

from gatewayd import textsafe
from gatewayd.errors import (
    StoreUnavailable,
)
from gatewayd.nursery.backoff import Backoff
from gatewayd.nursery.bus import BusEvent
from gatewayd.nursery.handle import AgentHandle, Answer
from gatewayd.nursery.sending import Sending
from gatewayd.store import agents as agents_store
from gatewayd.store import messages as messages_store
from gatewayd.store import outbound as outbound_store
from gatewayd.store.messages import StoredInbound
from gatewayd.store.retry import after_unavailable, wait_for_database
from gatewayd.usecases import webhooks as webhook_events
from gatewayd.whatsapp.port import (
    ClientEvent,
    ClientOutdated,
    Connected,
    ConnectFailed,
    Disconnected,
    EventSink,
    LoggedOut,
    MessageReceived,
    MessageUnreadable,
    Paired,
    PairingError,
    PairingFailed,
    QrCode,
    Receipt,
    StreamReplaced,
    TemporaryBan,
)

if TYPE_CHECKING:
    from gatewayd.nursery.agents import AgentSupervisor

log = structlog.get_logger()


class AgentTree(Sending):
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
            handle.set_connected(False)
            handle.done.set()
            log.info("gatewayd.agent.stopped")

    async def _run_tree(self) -> None:
        handle, db = self.handle, self.sup.db
        handle.terminal = False
        handle.set_connected(False)  # a crashed tree's client is gone; the new one says when
        events_send, events_receive = trio.open_memory_channel[ClientEvent](64)
        inbound_send, inbound_receive = trio.open_memory_channel[StoredInbound](math.inf)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._handle_events, events_receive)
                nursery.start_soon(self._send_worker)
                nursery.start_soon(self._outbox)
                scan = _Scan()
                nursery.start_soon(self._forwarder, inbound_receive, scan)
                # From here on newly stored messages come to this tree; those stored before
                # (a crash, a restart, a tree that died) are read back. A row may arrive both
                # ways: the forwarder skips what it has seen.
                handle.inbound = inbound_send
                age = self.sup.config().agents.redeliver_max_age
                stored_rows, expired = await wait_for_database(
                    db, lambda: messages_store.unhandled_inbound(db, handle.id, age)
                )
                if expired:
                    log.warning("gatewayd.inbound.expired", count=expired, maxAge=age)
                for stored in stored_rows:
                    log.info(
                        "gatewayd.inbound.redelivered",
                        rowId=stored.row_id,
                        messageId=stored.message.id,
                    )
                    scan.rows.add(stored.row_id)
                    inbound_send.send_nowait(stored)
                scan.done.set()
                async with events_send:
                    await self._client_loop(_Sink(self, events_send))
                # The connection ended for good: the tree stays up so queued sends are
                # answered and the forwarder finishes; the operator decides what is next.
                await trio.sleep_forever()
        finally:
            if handle.inbound is inbound_send:
                handle.inbound = None

    # ------------------------------------------------------------------ client loop

    async def _client_loop(self, events: EventSink) -> None:
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
            if isinstance(end, TemporaryBan):
                # WhatsApp says when it ends: connect again then, not before, not never.
                resume = max(end.expires_in, cfg.reconnect_initial)
                log.warning("gatewayd.agent.banned", code=end.code, resumeIn=round(resume, 1))
                await trio.sleep(resume)
                continue
            if isinstance(end, ClientOutdated):
                self.sup.client_outdated()
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
        db = self.sup.db
        await wait_for_database(
            db,
            lambda: agents_store.set_device(
                db,
                handle.id,
                device_jid=paired.device_jid,
                phone_number=paired.phone,
                lid=lid,
                device_info={"pushName": paired.push_name, "platform": paired.platform},
            ),
        )
        handle.record = attrs.evolve(
            handle.record, device_jid=paired.device_jid, phone_number=paired.phone, lid=lid
        )
        log.info("gatewayd.agent.paired", phone=paired.phone)

    async def _forget_device(self, device_jid: str) -> None:
        handle = self.handle
        await self.sup.backend.forget_device(device_jid)
        db = self.sup.db
        await wait_for_database(db, lambda: agents_store.set_device(db, handle.id, device_jid=None))
        handle.record = attrs.evolve(handle.record, device_jid=None)

    # ------------------------------------------------------------------ events

    async def set_status(self, status: str, reason: str | None) -> None:
        """Persist a transition, then publish it. The only writer of an agent's status."""
        handle = self.handle
        if (status, reason) == (handle.status, handle.status_reason):
            return
        previous = handle.status
        db = self.sup.db
        # A status change waits out a database outage (the client's events wait behind it).
        await wait_for_database(db, lambda: agents_store.set_status(db, handle.id, status, reason))
        handle.status, handle.status_reason = status, reason
        log.info("gatewayd.agent.status", status=status, previous=previous, reason=reason)
        self.sup.bus.publish(
            BusEvent(handle.agent_id, "status", {"status": status, "reason": reason})
        )
        await self._emit_webhook(
            webhook_events.STATUS,
            lambda record: webhook_events.status_delivery(record, status=status, reason=reason),
        )

    async def _handle_events(self, events: trio.MemoryReceiveChannel[ClientEvent]) -> None:
        handle = self.handle
        async for event in events:
            if isinstance(event, QrCode):
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
                self.sup.bus.publish(BusEvent(handle.agent_id, "paired", {"phone": event.phone}))
            elif isinstance(event, PairingFailed):
                handle.qr.clear()
                await self.set_status("auth_failed", f"pairing_failed:{event.reason}")
            elif isinstance(event, Connected):
                handle.set_connected(True)
                await self.set_status("connected", None)
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
                await self._emit_webhook(
                    webhook_events.ACK,
                    functools.partial(
                        webhook_events.ack_delivery, chat=event.chat,
                        message_ids=event.message_ids, type=event.type,
                        timestamp_ms=event.timestamp_ms,
                    ),
                )  # fmt: skip
            elif isinstance(event, MessageReceived | MessageUnreadable):
                pass  # never routed here: see _Sink
            else:
                handle.set_connected(False)
                await self.set_status(*_ended_status(event))

    # ------------------------------------------------------------------ forwarding

    async def _forwarder(
        self, inbound: trio.MemoryReceiveChannel[StoredInbound], scan: _Scan
    ) -> None:
        # Only rows the start-up scan read back can arrive twice (from the scan and from the
        # writer, around the moment this tree took over): remember those, and only until
        # their second copy has passed.
        await scan.done.wait()
        twice, taken = set(scan.rows), set[int]()
        handle = self.handle
        try:
            while True:
                if inbound.statistics().current_buffer_used == 0:
                    handle.forwarder_idle = True
                try:
                    stored = await inbound.receive()
                except trio.EndOfChannel:
                    return
                handle.forwarder_idle = False
                await self._take(stored, twice, taken)
        finally:
            handle.forwarder_idle = False
            await self._requeue_direct_at_exit()

    async def _take(self, stored: StoredInbound, twice: set[int], taken: set[int]) -> None:
        """Forward ``stored`` unless it is the second copy of a row read back at the start."""
        row = stored.row_id
        if row in twice:
            if row in taken:
                twice.discard(row)
                taken.discard(row)
                return
            taken.add(row)
        with structlog.contextvars.bound_contextvars(messageId=stored.message.id):
            await self._forward_one(stored)

    async def _forward_one(self, stored: StoredInbound) -> None:
        handle, db = self.handle, self.sup.db
        row = stored.row_id
        limit = self.sup.config().agents.forward_max_attempts
        # Counted before the forwarder starts: a message that keeps killing the process is
        # recognised after `limit` tries (many rows per transaction, across agents). One the
        # writer handed to this idle forwarder came with its first attempt counted in its
        # insert: one store call less per message (AgentSupervisor._take_first_attempt).
        attempts = stored.attempts
        if attempts is None:
            attempts = await wait_for_database(db, lambda: self.sup.attempts.submit(row))
        if attempts > limit:
            await self._quarantine(stored, f"not handled after {limit} attempts")
            return
        while True:
            try:
                decision = await self.sup.forward(handle, stored)
                break
            except StoreUnavailable:
                await after_unavailable(db)  # transient: take it up again once the database is back
            except Exception as exc:
                # A bug or a message nothing can process: park it with its reason, move on.
                log.exception("gatewayd.forward.crashed")
                await self._quarantine(stored, f"{type(exc).__name__} while forwarding")
                return
        if isinstance(decision, str):
            await wait_for_database(db, lambda: self.sup.outcomes.submit((row, decision)))
            self._publish_handled(row, stored.message.id, decision)
            return
        answer = decision if isinstance(decision, Answer) else Answer(decision)
        direct = self._claim_outbox()

        async def queue() -> outbound_store.OutboundRow | None:
            # Shielded when written "sending": the row must reach handle.direct (cancelled
            # meanwhile, its answer would be lost and the row never sent nor queued again).
            with trio.CancelScope(shield=direct):
                written = await outbound_store.queue_reply(
                    db, handle.id, row, answer.reply, trace_id=stored.trace_id,
                    reply_to_wa_id=stored.message.id, execution=answer.execution,
                    sending=direct,
                )  # fmt: skip
            return written

        queued = await wait_for_database(db, queue)
        if queued is None:
            # Not queued now, or queued by an attempt whose commit's answer was lost (the
            # retry finds the message answered): the outbox reads the table to be sure, and
            # such a reply written "sending" for it is queued instead.
            if direct:
                handle.bucket.put_back()
                await wait_for_database(db, lambda: outbound_store.requeue(db, reply_to=row))
            handle.outbox_fresh = None
        elif direct:
            handle.direct[queued.row_id] = queued
        elif handle.outbox_fresh is not None:
            handle.outbox_fresh.append(queued)  # the outbox need not read it back
        handle.outbox_wake.set()

    def _claim_outbox(self) -> bool:
        """Whether the reply about to be queued goes to the outbox directly, written
        ``sending``: the outbox waits with nothing left to send, the agent is connected, and
        its bucket has a token for it now (taken here)."""
        handle = self.handle
        if not (handle.outbox_idle and handle.connected):
            return False
        try:
            handle.bucket.take_nowait()
        except trio.WouldBlock:
            return False
        handle.outbox_idle = False  # the replies after this one queue behind it
        return True

    async def _quarantine(self, stored: StoredInbound, reason: str) -> None:
        db = self.sup.db
        log.error("gatewayd.inbound.quarantined", rowId=stored.row_id, reason=reason)
        await wait_for_database(db, lambda: messages_store.quarantine(db, stored.row_id, reason))
        self._publish_handled(stored.row_id, stored.message.id, f"quarantined:{reason}")


@attrs.define(eq=False)
class _Scan:
    """The rows a tree read back at its start, once it has."""

    rows: set[int] = attrs.Factory(set)
    done: trio.Event = attrs.Factory(trio.Event)


class _Sink:
    """The ``EventSink`` a tree gives its client: received messages are committed by the
    inbound writer before ``send`` returns; every other event goes to the event handler."""

    def __init__(self, tree: AgentTree, events: trio.MemorySendChannel[ClientEvent]) -> None:
        self._tree = tree
        self._events = events

    async def send(self, value: ClientEvent) -> None:
        if isinstance(value, MessageReceived):
            row_id = await self._tree.sup.inbound.persist(self._tree.handle.id, value.message)
            if row_id is None:
                log.info("gatewayd.inbound.duplicate", messageId=value.message.id)
            return
        if isinstance(value, MessageUnreadable):
            await self._keep_unreadable(value)
            return
        await self._events.send(value)

    async def _keep_unreadable(self, event: MessageUnreadable) -> None:
        db = self._tree.sup.db
        raw_id = event.message_id or f"unreadable:{hashlib.sha256(event.raw).hexdigest()[:32]}"
        message_id = textsafe.clean(raw_id)[:200]
        reason = textsafe.clean(event.reason)[:500]
        log.error("gatewayd.inbound.unreadable", messageId=message_id, reason=reason)
        await wait_for_database(
            db,
            lambda: messages_store.quarantine_inbound(
                db, self._tree.handle.id, message_id, reason, event.raw
            ),
        )


def _ended_status(event: ClientEvent) -> tuple[str, str | None]:
    """The persisted status (and reason) after a connection-ending event."""
    if isinstance(event, Disconnected):
        return "disconnected", event.reason
    if isinstance(event, LoggedOut):
        return "logged_out", f"logged_out:{event.reason}"
    if isinstance(event, StreamReplaced):
        return "replaced", "stream_replaced"
    if isinstance(event, TemporaryBan):
        return "banned", f"temporary_ban:{event.code}:{int(event.expires_in)}s"
    if isinstance(event, ClientOutdated):
        return "outdated", "client_outdated"
    raise AssertionError(f"unexpected event {event!r}")

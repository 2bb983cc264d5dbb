"""The agents supervisor: owns the agents nursery and every agent's handle.

Agents are started, stopped, reconnected, logged out and deleted only through here.
At start every agent with a paired device (and not stopped by the operator) is
restored. HTTP never touches a client: it submits commands through ``submit``/``send``.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import structlog
import trio

from gatewayd.config import Config
from gatewayd.errors import (
    AgentStopped,
    IdempotencyConflict,
    RateLimited,
    SendTimeout,
    SessionNotFound,
    SessionNotReady,
)
from gatewayd.metrics import Metrics
from gatewayd.nursery.agent import AgentTree
from gatewayd.nursery.bus import BusEvent, EventBus, message_event
from gatewayd.nursery.commands import Outgoing, Sent, new_send, replay
from gatewayd.nursery.groupcommit import GroupCommit
from gatewayd.nursery.handle import AgentHandle, Forward, refuse_queued
from gatewayd.nursery.inbound import InboundWriter
from gatewayd.nursery.unlink import unlink_offline
from gatewayd.nursery.webhooks import WebhookDispatcher
from gatewayd.store import agents as agents_store
from gatewayd.store import messages as messages_store
from gatewayd.store import outbound as outbound_store
from gatewayd.store.db import Database
from gatewayd.store.messages import StoredInbound
from gatewayd.store.retry import wait_for_database
from gatewayd.store.webhooks import NewDelivery
from gatewayd.usecases.webhooks import MediaUrl, inbound_delivery, no_media_url
from gatewayd.whatsapp.port import InboundMessage, WhatsAppBackend

log = structlog.get_logger()

RESTORE_SLOT_TIMEOUT = 90.0
#: Restores of more agents than this report their progress ("restoring 250/1000").
RESTORE_PROGRESS_MIN = 20
"""Longest one restored agent keeps its connect slot without reporting a status (neonize's own
bounds for a first attempt are 15 s to register plus 60 s to connect)."""

STUCK = "stuck"
"""The status reason of an agent whose tree did not end within ``agents.command_timeout`` of
its stop: a call of it is stuck where cancellation cannot reach it."""


async def record_only(handle: AgentHandle, stored: StoredInbound) -> str | Outgoing:
    """The forwarder of a daemon with nowhere to forward to: the message is recorded."""
    return "recorded"


class AgentSupervisor:
    def __init__(
        self,
        *,
        db: Database,
        backend: WhatsAppBackend,
        metrics: Metrics,
        bus: EventBus,
        config: Callable[[], Config],
        forward: Forward = record_only,
        media_url: MediaUrl = no_media_url,
    ) -> None:
        self.db = db
        self.backend = backend
        self.metrics = metrics
        self.bus = bus
        self.config = config
        self.forward = forward
        self._handles: dict[str, AgentHandle] = {}
        self._by_uuid: dict[uuid.UUID, AgentHandle] = {}
        self._nursery: trio.Nursery | None = None
        #: Agents restore has still to start (a stop meanwhile takes one out).
        self._restoring: set[str] = set()
        #: Stopped agents whose tree has not ended yet (a call stuck), until it does.
        self._stuck: dict[str, AgentHandle] = {}
        self.media_url = media_url  # the link in a received media message's webhook
        self.webhooks = WebhookDispatcher(db, config, metrics)  # runs with the agents nursery
        #: Commits every received message (and its webhook) before its callback returns.
        self.inbound = InboundWriter(
            db,
            self._stored,
            outbox=self._webhook_of,
            on_outbox=self.webhooks.wake,
            take_first_attempt=self._take_first_attempt,
        )
        #: Records the forwarder's outcomes, many per transaction.
        self.outcomes = GroupCommit[tuple[int, str], None](
            lambda items: messages_store.mark_handled_many(db, items)
        )
        #: Counts forwarding attempts, many per transaction.
        self.attempts = GroupCommit[int, int](lambda rows: messages_store.begin_attempts(db, rows))
        #: WhatsApp refused the client version (see ``client_outdated``).
        self.outdated = False
        #: Set once ``run`` has fully finished, shutdown bookkeeping included.
        self.finished = trio.Event()

    # ------------------------------------------------------------------ the nursery

    async def run(
        self, *, restore: bool = True, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the agents nursery; restore paired agents; run until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.inbound.run)
                await nursery.start(self.outcomes.run)
                await nursery.start(self.attempts.run)
                await nursery.start(self.webhooks.run)
                self._nursery = nursery
                # Sends a dead process left behind: "sending" is unknown, "pending" failed.
                reconciled = await wait_for_database(
                    self.db, lambda: outbound_store.reconcile(self.db)
                )
                if any(reconciled.values()):
                    log.warning("gatewayd.send.reconciled", **reconciled)
                if restore:
                    restored = await self.restore()
                    log.info("gatewayd.agents.restored", count=restored)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            ids = [h.id for h in self._handles.values()]
            self._handles.clear()
            self._by_uuid.clear()
            if ids:
                # Shutdown is not the phone's doing: record it, in one statement.
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    try:
                        await agents_store.mark_all_disconnected(self.db, ids, "shutdown")
                    except Exception:
                        log.warning("gatewayd.agents.shutdown_status_failed", exc_info=True)
            self.finished.set()

    async def restore(self) -> int:
        """Start every restorable agent, at most ``agents.restore_concurrency`` connecting at once.

        An agent holds its slot until its first status (connected, or its first attempt
        failed), its tree's end, or ``RESTORE_SLOT_TIMEOUT``; the next agent starts then. So
        the first sends after a restart of many agents wait behind a few connects, not all
        of them. The first wave is started before this returns, the rest in the background;
        an agent started or stopped by the operator meanwhile is left alone.
        """
        records = await agents_store.list_restorable(self.db)
        if records and self._nursery is not None:
            limiter = trio.CapacityLimiter(self.config().agents.restore_concurrency)
            self._restoring = {record.agent_id for record in records}
            await self._nursery.start(self._restore_all, records, limiter)
        return len(records)

    async def _restore_all(
        self,
        records: list[agents_store.AgentRecord],
        limiter: trio.CapacityLimiter,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        started = False
        total = len(records)
        # Progress for a person watching a long start: about ten lines, whatever the count.
        step = max(RESTORE_PROGRESS_MIN, -(-total // 10))
        for done, record in enumerate(records, 1):
            if not started and limiter.available_tokens == 0:
                task_status.started()  # the first wave is in; the others follow
                started = True
            nursery = self._nursery
            if nursery is None:
                return
            await nursery.start(self._restore_one, record, limiter)
            if total > RESTORE_PROGRESS_MIN and (done % step == 0 or done == total):
                log.info("gatewayd.agents.restoring", progress=f"{done}/{total}")
        if not started:
            task_status.started()
        if len(records) > limiter.total_tokens:
            log.info("gatewayd.agents.restore_done", count=len(records))

    async def _restore_one(
        self,
        record: agents_store.AgentRecord,
        limiter: trio.CapacityLimiter,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Start one restored agent and hold a slot of ``limiter`` until its first status."""
        async with limiter:
            agent_id = record.agent_id
            if agent_id not in self._restoring or agent_id in self._handles:
                task_status.started()  # stopped, or started by the operator, meanwhile
                return
            self._restoring.discard(agent_id)
            # Subscribed before the tree starts: its first status cannot be missed.
            with self.bus.subscribe(agent_id, buffer=64) as events:
                try:
                    handle = await self._spawn(record)
                finally:
                    task_status.started()
                with trio.move_on_after(RESTORE_SLOT_TIMEOUT):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_cancel_when_set, handle.done, nursery.cancel_scope)
                        async for event in events:
                            if event.kind == "status":
                                break
                        nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ lifecycle

    def get(self, agent_id: str) -> AgentHandle | None:
        return self._handles.get(agent_id)

    def handles(self) -> list[AgentHandle]:
        return list(self._handles.values())

    def by_id(self, agent_uuid: uuid.UUID) -> AgentHandle | None:
        """The running agent whose row id (the /api/v1 session id) is ``agent_uuid``."""
        return self._by_uuid.get(agent_uuid)

    async def start(self, agent_id: str) -> AgentHandle:
        """Start the agent's tree (idempotent: a running agent is returned as is)."""
        handle = self._handles.get(agent_id)
        if handle is not None and not handle.done.is_set():
            return handle
        if agent_id in self._stuck:
            raise AgentStopped(
                f"Session {agent_id!r} is still stuck in a call from before its stop;"
                " it can start once that call returns"
            )
        record = await agents_store.get_agent(self.db, agent_id)
        if record is None:
            raise SessionNotFound(f"No session for agent {agent_id!r}")
        return await self._spawn(record)

    async def _spawn(self, record: agents_store.AgentRecord) -> AgentHandle:
        if self._nursery is None:
            raise AgentStopped("The agents supervisor is not running")
        cfg = self.config().agents
        handle = AgentHandle.create(
            record,
            self.backend.client(record.agent_id),
            queue_size=cfg.queue_size,
            rate_per_minute=cfg.send_rate_per_minute,
            burst=cfg.send_burst,
        )
        self._handles[record.agent_id] = handle
        self._by_uuid[record.id] = handle
        await self._nursery.start(AgentTree(self, handle).run_forever)
        return handle

    async def stop(
        self, agent_id: str, *, status: str | None = "stopped", reason: str | None = None
    ) -> bool:
        """Cancel the agent's tree and wait for it; record ``status`` unless None.

        The wait is bounded by ``agents.command_timeout``. A tree still running then has a
        call stuck where cancellation cannot reach it (a Go call in a worker thread): the
        agent is logged and recorded as ``status`` (``disconnected`` for None) with the reason
        ``stuck``, listed by ``stuck_agents`` until its tree ends, and then recorded as asked
        (unless it runs again by then). Returns whether the tree ended in time.
        """
        self._restoring.discard(agent_id)
        handle = self._handles.pop(agent_id, None)
        if handle is not None:
            if self._by_uuid.get(handle.id) is handle:
                del self._by_uuid[handle.id]
            handle.cancel_scope.cancel()
            timeout = self.config().agents.command_timeout
            with trio.move_on_after(timeout):
                await handle.done.wait()
            ended = handle.done.is_set()
            handle.commands.close()
            for command in handle.take_queued():
                await refuse_queued(self.db, command, "the agent was stopped")
            if not ended:
                await self._report_stuck(handle, status, reason, timeout)
            elif status is not None:
                await agents_store.set_status(self.db, handle.id, status, reason)
            return ended
        elif status is not None:
            record = await agents_store.get_agent(self.db, agent_id)
            if record is None:
                raise SessionNotFound(f"No session for agent {agent_id!r}")
            await agents_store.set_status(self.db, record.id, status, reason)
        return True

    def stuck_agents(self) -> list[str]:
        """Agents stopped while a call of theirs was stuck, whose tree has not ended yet."""
        return list(self._stuck)

    async def _report_stuck(
        self, handle: AgentHandle, status: str | None, reason: str | None, waited: float
    ) -> None:
        """Record a stop that timed out, and finish its bookkeeping once the tree ends."""
        log.error("gatewayd.agent.stuck", agentId=handle.agent_id, waited=waited)
        self._stuck[handle.agent_id] = handle
        stuck_status = status or "disconnected"
        handle.status, handle.status_reason = stuck_status, STUCK
        await agents_store.set_status(self.db, handle.id, stuck_status, STUCK)
        self.bus.publish(
            BusEvent(handle.agent_id, "status", {"status": stuck_status, "reason": STUCK})
        )
        nursery = self._nursery
        if nursery is not None:
            nursery.start_soon(self._after_stuck, handle, status, reason)

    async def _after_stuck(
        self, handle: AgentHandle, status: str | None, reason: str | None
    ) -> None:
        await handle.done.wait()
        if self._stuck.get(handle.agent_id) is handle:
            del self._stuck[handle.agent_id]
        log.warning("gatewayd.agent.unstuck", agentId=handle.agent_id)
        if status is not None and handle.agent_id not in self._handles:
            await agents_store.set_status(self.db, handle.id, status, reason)

    async def restart(self, agent_id: str) -> AgentHandle:
        """Stop and start again (reconnect with the same device)."""
        await self.stop(agent_id, status=None)
        return await self.start(agent_id)

    async def logout(self, agent_id: str) -> bool:
        """Log the device out, forget it, stop the tree. An agent that is not connected is
        connected briefly to tell WhatsApp (so the phone stops listing the device). Returns
        whether WhatsApp was told (False: the phone may still list it; also logged)."""
        record = await agents_store.get_agent(self.db, agent_id)
        if record is None:
            raise SessionNotFound(f"No session for agent {agent_id!r}")
        handle = self._handles.get(agent_id)
        told = False
        if handle is not None and handle.connected:
            try:
                await handle.client.logout()
                told = True
            except Exception:
                log.warning("gatewayd.agent.logout_failed", agentId=agent_id, exc_info=True)
        ended = await self.stop(agent_id, status=None)
        if record.device_jid and not told and ended:
            client = self.backend.client(agent_id)
            told = await unlink_offline(client, record.device_jid, self.inbound, record.id)
        if record.device_jid:
            if not told:
                log.warning("gatewayd.agent.still_listed", agentId=agent_id)
            await self.backend.forget_device(record.device_jid)
        await agents_store.set_device(self.db, record.id, device_jid=None)
        await agents_store.set_status(self.db, record.id, "stopped", "logged_out_by_operator")
        return told or not record.device_jid

    async def new_pairing(self, agent_id: str) -> AgentHandle:
        """Log out whatever device is linked and start pairing again (a fresh QR)."""
        await self.logout(agent_id)
        return await self.start(agent_id)

    async def delete(self, agent_id: str) -> bool:
        """Log out, remove device data and the agent's rows; whether WhatsApp was told."""
        record = await agents_store.get_agent(self.db, agent_id)
        if record is None:
            raise SessionNotFound(f"No session for agent {agent_id!r}")
        told = await self.logout(agent_id)
        await agents_store.delete_agent(self.db, record.id)
        log.info("gatewayd.agent.deleted", agentId=agent_id, unlinked=told)
        return told

    # ------------------------------------------------------------------ commands

    def _take_first_attempt(self, agent_uuid: uuid.UUID) -> bool:
        """Whether a message about to be stored for this agent is stored with its first
        forwarding attempt counted: only when its forwarder waits with nothing queued, so
        that the message goes straight to it (one message at a time: the next waits for the
        forwarder to be idle again). A restart then finds the count right: messages queued
        behind a busy forwarder were not counted; the one it was forwarding was."""
        handle = self._by_uuid.get(agent_uuid)
        if handle is None or handle.inbound is None or not handle.forwarder_idle:
            return False
        handle.forwarder_idle = False
        return True

    def _stored(self, agent_uuid: uuid.UUID, stored: StoredInbound) -> None:
        """The inbound writer committed a message: count it, publish it, hand it over."""
        handle = self._by_uuid.get(agent_uuid)
        if handle is None:
            return  # not running: the agent's next tree reads it back from the table
        self.metrics.messages_received.labels(handle.agent_id).inc()
        self.metrics.wa_messages_received.labels(handle.agent_id).inc()
        self.bus.publish(message_event(handle.agent_id, stored.row_id, stored.message))
        if handle.inbound is not None:
            try:
                handle.inbound.send_nowait(stored)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # that tree is ending: the next one reads the row back

    def _webhook_of(self, agent_uuid: uuid.UUID, message: InboundMessage) -> NewDelivery | None:
        """The webhook delivery of a message about to be stored (the writer commits both)."""
        handle = self._by_uuid.get(agent_uuid)
        country = self.config().whatsapp.default_country_code
        return None if handle is None else inbound_delivery(
            handle.record, message, default_country_code=country, media_url=self.media_url
        )  # fmt: skip

    def _ready(self, agent_id: str) -> AgentHandle:
        handle = self._handles.get(agent_id)
        if handle is None:
            # Callers check the agent exists; one that is not running is not ready.
            raise SessionNotReady(f"Session {agent_id!r} is not running")
        if not handle.connected:
            raise SessionNotReady(
                f"Session {agent_id!r} is not connected (status: {handle.status})"
            )
        return handle

    async def send(
        self,
        agent_id: str,
        message: Outgoing,
        trace_id: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Sent:
        """Record, queue and wait (up to ``agents.command_timeout``) for one send.

        The row is written before the send is queued (``pending``). With an
        ``idempotency_key`` already used for this agent, the first send's result is answered
        and nothing is sent again (IdempotencyConflict while that send is still open or its
        outcome is unknown). Refusals before anything was handed over (not connected, queue
        full) leave the key free for a retry.
        """
        if idempotency_key is not None:
            # A retry gets the first answer even while the agent is away.
            running = self._handles.get(agent_id)
            record = None if running else await agents_store.get_agent(self.db, agent_id)
            agent_uuid = running.id if running else record.id if record else None
            if agent_uuid is not None:
                first = await outbound_store.find_by_key(self.db, agent_uuid, idempotency_key)
                if first is not None:
                    return replay(first)
        handle = self._ready(agent_id)
        row_id = await outbound_store.insert_pending(
            self.db, handle.id, message, trace_id=trace_id, key=idempotency_key
        )
        if row_id is None:  # the same key raced us in
            assert idempotency_key is not None
            first = await outbound_store.find_by_key(self.db, handle.id, idempotency_key)
            if first is None:
                raise IdempotencyConflict(
                    "A send with this Idempotency-Key was just refused; retry"
                )
            return replay(first)
        command, reply = new_send(row_id, message, trace_id)
        try:
            handle.commands.send_nowait(command)
        except trio.WouldBlock:
            await outbound_store.release_key(self.db, row_id, "queue full")
            raise RateLimited(
                f"{self.config().agents.queue_size} messages are already waiting for agent {agent_id!r}"
            ) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await outbound_store.release_key(self.db, row_id, "agent stopping")
            raise AgentStopped(f"Session {agent_id!r} is stopping") from None
        timeout = self.config().agents.command_timeout
        with trio.move_on_after(timeout):
            async with reply:
                result = await reply.receive()
            return result.unwrap()
        raise SendTimeout(
            f"The message was not sent within {timeout:g} s; it may still go out later"
        )

    # ------------------------------------------------------------------ reporting

    def client_outdated(self) -> None:
        """WhatsApp refused the client version. It is baked into the library, so it hits
        every agent at once: one operator alert (log, metric, /health degraded), not one per
        agent; the agents stay down (status ``outdated``) until gatewayd is upgraded."""
        if self.outdated:
            return
        self.outdated = True
        self.metrics.client_outdated.set(1)
        log.critical(
            "gatewayd.whatsapp.client_outdated",
            action="WhatsApp refuses this client version: upgrade gatewayd (its neonize) and restart",
        )

    def counts_by_status(self) -> dict[str, int]:
        return dict(Counter(h.status for h in self._handles.values()))

    def reconfigure(self, config: Config) -> None:
        """Apply live agent settings (token bucket) to every running agent."""
        for handle in self._handles.values():
            handle.bucket.reconfigure(config.agents.send_rate_per_minute, config.agents.send_burst)

    def refresh_gauges(self) -> None:
        counts = self.counts_by_status()
        for status in agents_store.STATUSES:
            self.metrics.agents.labels(status).set(counts.get(status, 0))
        self.metrics.wa_sessions_active.set(counts.get("connected", 0))
        for handle in self._handles.values():
            self.metrics.queue_depth.labels(handle.agent_id).set(handle.queue_depth())

    def health(self) -> dict[str, Any]:
        counts = self.counts_by_status()
        return {
            "status": "degraded" if self.outdated else "up",
            **({"alert": "client_outdated"} if self.outdated else {}),
            "agents": counts,
            "total": sum(counts.values()),
            "connected": counts.get("connected", 0),
            **({"stuck": sorted(self._stuck)} if self._stuck else {}),
        }


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()

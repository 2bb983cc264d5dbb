"""The agents supervisor: owns the agents nursery and every agent's handle.

Agents are started, stopped, reconnected, logged out and deleted only through here.
At start every agent with a paired device (and not stopped by the operator) is
restored. HTTP never touches a client: it submits commands through ``submit``/``send``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import outcome
import structlog
import trio

from gatewayd.config import Config
from gatewayd.errors import AgentStopped, RateLimited, SendTimeout, SessionNotFound, SessionNotReady
from gatewayd.metrics import Metrics
from gatewayd.nursery.agent import AgentHandle, AgentTree, Forward
from gatewayd.nursery.bus import EventBus
from gatewayd.nursery.commands import Outgoing, Sent, new_send
from gatewayd.store import agents as agents_store
from gatewayd.store.db import Database
from gatewayd.store.messages import StoredInbound
from gatewayd.whatsapp.port import WhatsAppBackend

log = structlog.get_logger()


async def record_only(handle: AgentHandle, stored: StoredInbound) -> str:
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
    ) -> None:
        self.db = db
        self.backend = backend
        self.metrics = metrics
        self.bus = bus
        self.config = config
        self.forward = forward
        self._handles: dict[str, AgentHandle] = {}
        self._nursery: trio.Nursery | None = None
        #: Set once ``run`` has fully finished, shutdown bookkeeping included.
        self.finished = trio.Event()

    # ------------------------------------------------------------------ the nursery

    async def run(
        self, *, restore: bool = True, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the agents nursery; restore paired agents; run until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if restore:
                    restored = await self.restore()
                    log.info("gatewayd.agents.restored", count=restored)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            ids = [h.id for h in self._handles.values()]
            self._handles.clear()
            if ids:
                # Shutdown is not the phone's doing: record it, in one statement.
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    try:
                        await agents_store.mark_all_disconnected(self.db, ids, "shutdown")
                    except Exception:
                        log.warning("gatewayd.agents.shutdown_status_failed", exc_info=True)
            self.finished.set()

    async def restore(self) -> int:
        records = await agents_store.list_restorable(self.db)
        for record in records:
            await self._spawn(record)
        return len(records)

    # ------------------------------------------------------------------ lifecycle

    def get(self, agent_id: str) -> AgentHandle | None:
        return self._handles.get(agent_id)

    def handles(self) -> list[AgentHandle]:
        return list(self._handles.values())

    async def start(self, agent_id: str) -> AgentHandle:
        """Start the agent's tree (idempotent: a running agent is returned as is)."""
        handle = self._handles.get(agent_id)
        if handle is not None and not handle.done.is_set():
            return handle
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
        await self._nursery.start(AgentTree(self, handle).run_forever)
        return handle

    async def stop(
        self, agent_id: str, *, status: str | None = "stopped", reason: str | None = None
    ) -> None:
        """Cancel the agent's tree and wait for it; record ``status`` unless None."""
        handle = self._handles.pop(agent_id, None)
        if handle is not None:
            handle.cancel_scope.cancel()
            await handle.done.wait()
            handle.commands.close()
            if status is not None:
                await agents_store.set_status(self.db, handle.id, status, reason)
        elif status is not None:
            record = await agents_store.get_agent(self.db, agent_id)
            if record is None:
                raise SessionNotFound(f"No session for agent {agent_id!r}")
            await agents_store.set_status(self.db, record.id, status, reason)

    async def restart(self, agent_id: str) -> AgentHandle:
        """Stop and start again (reconnect with the same device)."""
        await self.stop(agent_id, status=None)
        return await self.start(agent_id)

    async def logout(self, agent_id: str) -> None:
        """Log the device out (when connected), forget it, stop the tree."""
        record = await agents_store.get_agent(self.db, agent_id)
        if record is None:
            raise SessionNotFound(f"No session for agent {agent_id!r}")
        handle = self._handles.get(agent_id)
        if handle is not None and handle.connected:
            try:
                await handle.client.logout()
            except Exception:
                log.warning("gatewayd.agent.logout_failed", agentId=agent_id, exc_info=True)
        await self.stop(agent_id, status=None)
        if record.device_jid:
            await self.backend.forget_device(record.device_jid)
        await agents_store.set_device(self.db, record.id, device_jid=None)
        await agents_store.set_status(self.db, record.id, "stopped", "logged_out_by_operator")

    async def new_pairing(self, agent_id: str) -> AgentHandle:
        """Log out whatever device is linked and start pairing again (a fresh QR)."""
        await self.logout(agent_id)
        return await self.start(agent_id)

    async def delete(self, agent_id: str) -> None:
        """Log out, remove device data and the agent's rows."""
        record = await agents_store.get_agent(self.db, agent_id)
        if record is None:
            raise SessionNotFound(f"No session for agent {agent_id!r}")
        await self.logout(agent_id)
        await agents_store.delete_agent(self.db, record.id)
        log.info("gatewayd.agent.deleted", agentId=agent_id)

    # ------------------------------------------------------------------ commands

    def submit(
        self, agent_id: str, message: Outgoing, trace_id: str | None = None
    ) -> trio.MemoryReceiveChannel[outcome.Outcome[Sent]]:
        """Queue a send without waiting: SessionNotFound, SessionNotReady, RateLimited."""
        handle = self._handles.get(agent_id)
        if handle is None:
            # Callers check the agent exists; one that is not running is not ready.
            raise SessionNotReady(f"Session {agent_id!r} is not running")
        if not handle.connected:
            raise SessionNotReady(
                f"Session {agent_id!r} is not connected (status: {handle.status})"
            )
        command, reply = new_send(message, trace_id)
        try:
            handle.commands.send_nowait(command)
        except trio.WouldBlock:
            raise RateLimited(
                f"{self.config().agents.queue_size} messages are already waiting for agent {agent_id!r}"
            ) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise AgentStopped(f"Session {agent_id!r} is stopping") from None
        return reply

    async def send(self, agent_id: str, message: Outgoing, trace_id: str | None = None) -> Sent:
        """Queue a send and wait (up to ``agents.command_timeout``) for its result."""
        reply = self.submit(agent_id, message, trace_id)
        timeout = self.config().agents.command_timeout
        with trio.move_on_after(timeout):
            async with reply:
                result = await reply.receive()
            return result.unwrap()
        raise SendTimeout(
            f"The message was not sent within {timeout:g} s; it may still go out later"
        )

    # ------------------------------------------------------------------ reporting

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
            "status": "up",
            "agents": counts,
            "total": sum(counts.values()),
            "connected": counts.get("connected", 0),
        }

"""The simnet's side of remote clients: sessions, their outboxes and acknowledgements.

A session is one ``pair`` or ``run`` of an agent's ``SimulatedClient``, driven by a task here
on behalf of a client in another process. The task pushes events into the session's outbox
(its ``EventSink``); the remote client fetches them by long poll and acknowledges them by
sequence number once its own ``events.send`` returned — whatsmeow's ``SynchronousAck``. An
event leaves the network's care only when acknowledged: when a session ends any other way
(the client closed it, went silent for ``LEASE`` seconds, or a new session of the same agent
replaced it) its unacknowledged messages go back to the front of the agent's queue and are
delivered on the next connection.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Literal, cast

import attrs
import structlog
import trio

from gatewayd.errors import NotFound, WhatsAppError
from gatewayd.whatsapp.port import (
    ClientEvent,
    ConnectFailed,
    ConnectionEnd,
    EventSink,
    MessageReceived,
    PairingError,
    Receipt,
)
from gatewayd.whatsapp.sim import SimulatedWhatsApp
from gatewayd.whatsapp.simnet.statefile import Persister

log = structlog.get_logger()

WINDOW = 256  # events handed out and not yet acknowledged, per session
LEASE = 10.0  # seconds a session lives without a poll
MAX_WAIT = 30.0  # longest long poll
BATCH = 500  # most events in one poll answer

Drive = Callable[[EventSink, trio.TaskStatus[None]], Awaitable[object]]


class SessionGone(NotFound):
    """No such session (it ended, expired, was replaced, or the simnet restarted)."""


@attrs.define(eq=False)
class Session:
    """One remote ``pair`` / ``run``; it is the ``EventSink`` its task pushes into."""

    id: str
    agent_id: str
    kind: Literal["pair", "run"]
    outbox: list[tuple[int, ClientEvent]] = attrs.Factory(list)
    next_seq: int = 1
    finished: bool = False  # the task returned: nothing follows what is in the outbox
    closed: bool = False
    polls: int = 0
    expires_at: float = 0.0
    cancel_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    task_done: trio.Event = attrs.Factory(trio.Event)
    _changed: trio.Event = attrs.Factory(trio.Event)
    _room: trio.Event = attrs.Factory(trio.Event)

    async def send(self, value: ClientEvent) -> None:
        """Queue ``value`` for the client; waits while the window is full."""
        while len(self.outbox) >= WINDOW:
            self._room = trio.Event()
            await self._room.wait()
        self.outbox.append((self.next_seq, value))
        self.next_seq += 1
        self.notify()

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def ack(self, seq: int) -> list[ClientEvent]:
        """Drop everything up to ``seq``; returns what was dropped."""
        done = [event for s, event in self.outbox if s <= seq]
        if done:
            self.outbox = [(s, event) for s, event in self.outbox if s > seq]
            self._room.set()
        return done

    def unacked(self) -> list[MessageReceived | Receipt]:
        return [e for _, e in self.outbox if isinstance(e, MessageReceived | Receipt)]

    async def wait_changed(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await self._changed.wait()


class _Started:
    """A task status that remembers whether ``started`` was called."""

    def __init__(self, inner: trio.TaskStatus[None]) -> None:
        self._inner = inner
        self.done = False

    def started(self, value: None = None) -> None:
        self.done = True
        self._inner.started(value)


class SessionHub:
    """Every remote session of one network, plus the waiters of ``inject``."""

    def __init__(self, network: SimulatedWhatsApp, persister: Persister) -> None:
        self.network = network
        self.persister = persister
        self._sessions: dict[str, Session] = {}
        self._by_agent: dict[str, Session] = {}
        self._acked: dict[str, trio.Event] = {}  # inbound message id -> set on acknowledgement
        self._nursery: trio.Nursery | None = None

    def unacked(self) -> dict[str, list[MessageReceived | Receipt]]:
        """For the snapshot: what each agent's client holds unacknowledged."""
        return {s.agent_id: s.unacked() for s in self._sessions.values() if s.outbox}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the session tasks; expire sessions whose client went silent."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                await trio.sleep(LEASE / 10)
                now = trio.current_time()
                for session in list(self._sessions.values()):
                    if session.polls == 0 and session.expires_at < now:
                        log.info("gatewayd.simnet.session_expired", agentId=session.agent_id)
                        await self.close(session)

    # ------------------------------------------------------------------ opening and closing

    async def open_pair(self, agent_id: str) -> Session:
        """Start pairing; returns once the first QR shows."""
        client = self.network.client(agent_id)
        session = await self._open(agent_id, "pair")
        await self._start(session, lambda sink, ts: client.pair(sink, task_status=ts))
        return session

    async def open_run(self, agent_id: str, device_jid: str) -> Session | ConnectionEnd:
        """Connect ``device_jid``; the session, or the event saying why it cannot connect."""
        client = self.network.client(agent_id)
        session = await self._open(agent_id, "run")
        try:
            await self._start(
                session, lambda sink, ts: client.run(device_jid, sink, task_status=ts)
            )
        except ConnectFailed as exc:
            self._forget(session)
            return exc.event
        finally:
            self.persister.changed()  # the account, or a device found logged out
        return session

    async def _open(self, agent_id: str, kind: Literal["pair", "run"]) -> Session:
        previous = self._by_agent.get(agent_id)
        if previous is not None:
            # The agent's client came back (its process restarted): the old stream is dead.
            await self.close(previous)
        session = Session(secrets.token_hex(12), agent_id, kind)
        session.expires_at = trio.current_time() + LEASE
        self._sessions[session.id] = self._by_agent[agent_id] = session
        return session

    async def _start(self, session: Session, drive: Drive) -> None:
        assert self._nursery is not None, "the session hub is not running"
        try:
            await self._nursery.start(self._drive, session, drive)
        except WhatsAppError:
            self._forget(session)
            raise

    async def _drive(
        self, session: Session, drive: Drive, *, task_status: trio.TaskStatus[None]
    ) -> None:
        status = _Started(task_status)
        try:
            with session.cancel_scope:
                await drive(session, cast("trio.TaskStatus[None]", status))
        except Exception as exc:
            if not status.done:
                raise  # nursery.start re-raises it to the opener (ConnectFailed, …)
            if not isinstance(exc, PairingError):  # a failed pairing is an ordinary end
                log.exception("gatewayd.simnet.session_failed", agentId=session.agent_id)
        finally:
            session.finished = True
            session.task_done.set()
            session.notify()
            self.persister.changed()

    async def close(self, session: Session, ack: int = 0) -> None:
        """End ``session``: stop its task, put its unacknowledged messages back in the queue."""
        self._acknowledge(session, ack)
        if session.closed:
            return
        session.closed = True
        self._forget(session)
        session.cancel_scope.cancel()
        await session.task_done.wait()
        requeued = session.unacked()
        self.network.client(session.agent_id).requeue(requeued)
        session.outbox.clear()
        session.notify()
        if requeued:
            log.info("gatewayd.simnet.requeued", agentId=session.agent_id, count=len(requeued))
        self.persister.changed()

    def _forget(self, session: Session) -> None:
        self._sessions.pop(session.id, None)
        if self._by_agent.get(session.agent_id) is session:
            del self._by_agent[session.agent_id]

    def get(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionGone(f"no session {session_id!r}")
        return session

    # ------------------------------------------------------------------ polling

    async def poll(
        self, session: Session, ack: int, wait: float
    ) -> tuple[list[tuple[int, ClientEvent]], bool]:
        """Acknowledge up to ``ack``; then the events after it (waiting up to ``wait``
        seconds for one) and whether the session is over."""
        self._acknowledge(session, ack)
        session.polls += 1
        try:
            if not session.outbox and not session.finished:
                await session.wait_changed(min(max(wait, 0.0), MAX_WAIT))
        finally:
            session.polls -= 1
            session.expires_at = trio.current_time() + LEASE
        batch = session.outbox[:BATCH]
        over = session.finished and len(batch) == len(session.outbox)
        if over and not batch:
            # Everything was acknowledged and nothing follows: the session is done.
            self._forget(session)
            session.closed = True
        return batch, over

    def _acknowledge(self, session: Session, ack: int) -> None:
        done = session.ack(ack)
        if not done:
            return
        for event in done:
            if isinstance(event, MessageReceived):
                waiter = self._acked.pop(event.message.id, None)
                if waiter is not None:
                    waiter.set()
        self.persister.changed()

    # ------------------------------------------------------------------ inject waiters

    def watch(self, message_id: str) -> trio.Event:
        """An event set when a client acknowledges the message (register before a checkpoint)."""
        return self._acked.setdefault(message_id, trio.Event())

    def unwatch(self, message_id: str) -> None:
        self._acked.pop(message_id, None)

    async def changed(self) -> None:
        """Persist before answering: what the caller was told is on disk."""
        await self.persister.flush()

"""What outlives an agent's task tree: its handle (gatewayd/nursery/agent.py runs the tree).

The handle holds the command channel, the token bucket, the QR state and the connection flags;
a tree restart keeps them, so a crash never loses what callers queued. ``refuse_queued`` answers
a queued send that will not go out and releases its row.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Awaitable, Callable

import attrs
import outcome
import trio

from gatewayd.errors import AgentStopped, StoreError
from gatewayd.nursery.commands import Outgoing, SendCommand, Sent
from gatewayd.nursery.paircode import PAIR_CODE_WAIT, request_code
from gatewayd.nursery.ratelimit import TokenBucket
from gatewayd.store import agents as agents_store
from gatewayd.store import outbound as outbound_store
from gatewayd.store.db import Database
from gatewayd.store.executions import Execution
from gatewayd.store.messages import StoredInbound
from gatewayd.whatsapp.port import PairCode, WhatsAppClient
from gatewayd.whatsapp.qr import QrState


@attrs.frozen
class Answer:
    """A reply to queue, with the AI call that produced it (recorded in the same transaction)."""

    reply: Outgoing
    execution: Execution | None = None


#: What the forwarder decides for one persisted inbound message: its final outcome, or a
#: reply to queue (the message is handled once the reply went out or definitively failed).
Forward = Callable[["AgentHandle", StoredInbound], Awaitable["str | Outgoing | Answer"]]


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
    #: Set while connected (what the outbox waits for).
    online: trio.Event = attrs.field(factory=trio.Event)
    #: Set when a row is queued for the outbox.
    outbox_wake: trio.Event = attrs.field(factory=trio.Event)
    #: Rows just queued, handed to the outbox in memory while it has read everything queued
    #: before them (None otherwise: it reads the table). gatewayd/nursery/sending.py.
    outbox_fresh: deque[outbound_store.OutboundRow] | None = None
    #: The outbox waits for more with everything queued sent: the next reply may be written
    #: ``sending`` and handed to it directly (gatewayd/nursery/agent.py ``_forward_one``).
    outbox_idle: bool = False
    #: Replies written ``sending`` for the outbox that WhatsApp has not been handed yet,
    #: oldest first. The outbox sends them before anything else; whatever a tree leaves
    #: here is queued again (by it, or by the next tree's outbox).
    direct: dict[int, outbound_store.OutboundRow] = attrs.field(factory=dict)
    #: The forwarder waits for a message with none queued (see
    #: ``AgentSupervisor._take_first_attempt``).
    forwarder_idle: bool = False
    #: Where the inbound writer hands this agent's newly stored messages (the running tree's
    #: forwarder); None between trees — those rows are picked up by the next tree's scan.
    inbound: trio.MemorySendChannel[StoredInbound] | None = None
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

    def take_queued(self) -> list[SendCommand]:
        """Remove and return the commands still waiting (the agent is stopping)."""
        taken: list[SendCommand] = []
        while True:
            try:
                taken.append(self._commands_receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return taken

    async def pair_code(
        self,
        phone: str,
        *,
        default_country_code: str = "62",
        timeout: float = PAIR_CODE_WAIT,  # noqa: ASYNC109 - a bound on the whole request
    ) -> PairCode:
        """A code to type on ``phone`` to link it instead of scanning the QR.

        Waits up to ``timeout`` s for the pairing's first QR and for WhatsApp's answer.
        ``InvalidRecipient`` for a bad number; ``NotConnected`` when the agent is not pairing
        (connected, stopped, failed); ``WhatsAppError`` when WhatsApp refuses or is too slow.
        """
        return await request_code(
            self, phone, default_country_code=default_country_code, timeout=timeout
        )

    def set_connected(self, connected: bool) -> None:
        self.connected = connected
        if connected:
            self.online.set()
        elif self.online.is_set():
            self.online = trio.Event()


async def refuse_queued(db: Database, command: SendCommand, reason: str) -> None:
    """Answer a command that will never be sent, and free its row's key."""
    answer(command, outcome.Error(AgentStopped(f"The message was not sent: {reason}")))
    await release_shielded(db, command.row_id, reason)


async def release_shielded(db: Database, row_id: int, reason: str) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(5):
        try:
            await outbound_store.release_key(db, row_id, reason)
        except StoreError:
            pass  # still "pending": the next start records it as failed


def answer(command: SendCommand, result: outcome.Outcome[Sent]) -> None:
    try:
        command.reply.send_nowait(result)
    except (trio.BrokenResourceError, trio.WouldBlock):
        pass  # the caller gave up waiting (timeout, disconnect): nobody to tell

"""The inbound writer: every received message committed before its callback returns.

All agents hand their received messages to one writer task. It commits them in groups — one
transaction for everything that arrived while the previous one was committing — so under load
a single process persists thousands of messages per second while each callback still waits
for *its* commit (``persist`` returns only then). That wait is what lets a WhatsApp client
acknowledge a message only once we own it (docs/durability.md).

When the database is down the batch is kept and retried once it is back; the callbacks keep
waiting, which holds further messages back on the WhatsApp side. A batch that fails for a
non-transient reason is split, and a message that cannot be stored even alone is quarantined
(its id and the reason), so one poison message never blocks the others.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable

import attrs
import structlog
import trio

from gatewayd import textsafe
from gatewayd.errors import StoreError
from gatewayd.store import messages as messages_store
from gatewayd.store.db import Database
from gatewayd.store.messages import NewInbound, StoredInbound
from gatewayd.store.retry import wait_for_database
from gatewayd.whatsapp.port import InboundMessage

__all__ = ["InboundWriter", "sanitize_inbound"]

log = structlog.get_logger()

#: Seconds a stopping writer keeps committing what it was handed.
DRAIN_TIMEOUT = 5.0

#: Called (in the writer task) for every newly stored message, in commit order.
Deliver = Callable[[uuid.UUID, StoredInbound], None]


def sanitize_inbound(message: InboundMessage) -> tuple[InboundMessage, dict[str, str]]:
    """The message with every string made storable, and the originals of those changed."""
    raw = messages_store.unstructure_inbound(message)
    cleaned, escaped = textsafe.clean_tree(raw)
    if not escaped:
        return message, {}
    return messages_store.structure_inbound(cleaned), escaped


@attrs.define(eq=False)
class _Pending:
    item: NewInbound
    done: trio.Event = attrs.Factory(trio.Event)
    row_id: int | None = None


class InboundWriter:
    """Group-commits received messages; run it with ``nursery.start(writer.run)``."""

    def __init__(self, db: Database, deliver: Deliver, *, max_batch: int = 1000) -> None:
        self._db = db
        self._deliver = deliver
        self._max_batch = max_batch
        self._send, self._receive = trio.open_memory_channel[_Pending](math.inf)
        #: Messages committed, and transactions used (for the benchmark and metrics).
        self.committed = 0
        self.batches = 0

    async def persist(
        self, agent_uuid: uuid.UUID, message: InboundMessage, trace_id: str | None = None
    ) -> int | None:
        """Store ``message``; returns once committed: its row id, None for a duplicate.

        If the caller is cancelled, the message may still be committed (and is then handed
        to whichever tree of the agent runs by then).
        """
        message, escaped = sanitize_inbound(message)
        pending = _Pending(NewInbound(agent_uuid, message, escaped, trace_id))
        self._send.send_nowait(pending)
        await pending.done.wait()
        return pending.row_id

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                batch = [await self._receive.receive()]
                await self._commit(self._fill(batch))
        finally:
            # Shutting down: what was handed to us may already be acknowledged upstream
            # (whatsmeow acks before we see it), so commit it before going, boundedly.
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + DRAIN_TIMEOUT
                while (batch := self._fill([])) and not scope.cancel_called:
                    await self._commit(batch)
                if scope.cancelled_caught:
                    log.error("gatewayd.inbound.drain_timeout", left=self.queued())

    def _fill(self, batch: list[_Pending]) -> list[_Pending]:
        while len(batch) < self._max_batch:
            try:
                batch.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        return batch

    def queued(self) -> int:
        """Messages waiting for the next commit."""
        return self._receive.statistics().current_buffer_used

    async def _commit(self, batch: list[_Pending]) -> None:
        items = [p.item for p in batch]
        try:
            ids = await wait_for_database(
                self._db, lambda: messages_store.insert_inbound_batch(self._db, items)
            )
        except StoreError as exc:
            if len(batch) > 1:
                # Find the one that cannot be stored; the others go in as usual.
                half = len(batch) // 2
                await self._commit(batch[:half])
                await self._commit(batch[half:])
                return
            await self._quarantine(batch[0].item, exc)
            ids = [None]
        self.batches += 1
        for pending, row_id in zip(batch, ids, strict=True):
            pending.row_id = row_id
            if row_id is not None:
                self.committed += 1
                self._deliver(pending.item.agent_uuid, StoredInbound(row_id, pending.item.message))
            pending.done.set()

    async def _quarantine(self, item: NewInbound, exc: StoreError) -> None:
        log.error(
            "gatewayd.inbound.quarantined",
            messageId=item.message.id,
            error=type(exc).__name__,
            sqlstate=(exc.details or {}).get("sqlstate") if isinstance(exc.details, dict) else None,
        )
        try:
            await wait_for_database(
                self._db,
                lambda: messages_store.quarantine_inbound(
                    self._db, item.agent_uuid, textsafe.clean(item.message.id)[:200], "unstorable"
                ),
            )
        except StoreError:
            # Not even its id can be stored (the agent was deleted meanwhile): nothing to keep.
            log.error("gatewayd.inbound.dropped", messageId=item.message.id)

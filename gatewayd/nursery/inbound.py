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

import json
import math
import uuid
from collections.abc import Callable

import attrs
import structlog
import trio

from gatewayd import textsafe
from gatewayd.errors import StoreError, StoreUnavailable
from gatewayd.nursery.backoff import Backoff
from gatewayd.store import messages as messages_store
from gatewayd.store.db import Database
from gatewayd.store.messages import NewInbound, StoredInbound
from gatewayd.store.retry import wait_for_database
from gatewayd.store.webhooks import NewDelivery
from gatewayd.whatsapp.port import InboundMessage

__all__ = ["InboundWriter", "sanitize_inbound"]

log = structlog.get_logger()

#: Seconds a stopping writer keeps committing what it was handed.
DRAIN_TIMEOUT = 5.0

#: Called (in the writer task) for every newly stored message, in commit order.
Deliver = Callable[[uuid.UUID, StoredInbound], None]

#: The webhook delivery a received message makes (committed with it), or None.
Outbox = Callable[[uuid.UUID, InboundMessage], NewDelivery | None]


#: WhatsApp ids are ~20-32 characters; a longer one is cut (the original kept) so that it
#: always fits the unique index.
MAX_ID = 128


def sanitize_inbound(message: InboundMessage) -> tuple[InboundMessage, dict[str, str]]:
    """The message with every string made storable, and the originals of those changed."""
    raw = messages_store.unstructure_inbound(message)
    cleaned, escaped = textsafe.clean_tree(raw)
    if len(cleaned["id"]) > MAX_ID:
        escaped.setdefault("id", json.dumps(raw["id"]))
        cleaned["id"] = cleaned["id"][:MAX_ID]
    if not escaped:
        return message, {}
    return messages_store.structure_inbound(cleaned), escaped


def _blames_message(exc: Exception) -> bool:
    """Whether a failed insert is the message's fault (keep it aside) rather than the
    database's (wait and try again: dropping would lose every message while it lasts)."""
    if not isinstance(exc, StoreError):
        return True  # the message could not even be turned into parameters
    if isinstance(exc, StoreUnavailable):
        return False
    details = exc.details if isinstance(exc.details, dict) else {}
    state = str(details.get("sqlstate") or "")
    # Data exceptions, program limits, integrity rules other than "its agent is gone".
    return state[:2] in ("22", "54") or (state.startswith("23") and state != "23503")


@attrs.define(eq=False)
class _Pending:
    agent_uuid: uuid.UUID
    message: InboundMessage
    trace_id: str | None
    #: The message made storable; set by the writer task.
    item: NewInbound | None = None
    done: trio.Event = attrs.Factory(trio.Event)
    row_id: int | None = None


class InboundWriter:
    """Group-commits received messages; run it with ``nursery.start(writer.run)``."""

    def __init__(
        self,
        db: Database,
        deliver: Deliver,
        *,
        max_batch: int = 1000,
        outbox: Outbox | None = None,
        on_outbox: Callable[[], None] | None = None,
        take_first_attempt: Callable[[uuid.UUID], bool] | None = None,
    ) -> None:
        self._db = db
        self._deliver = deliver
        #: Whether a message of this agent is to be stored with its first forwarding attempt
        #: counted (gatewayd/nursery/agents.py says when).
        self._take_first_attempt = take_first_attempt
        #: What a message gives the webhook outbox, and whom to tell once that is committed.
        self._outbox = outbox
        self._on_outbox = on_outbox
        self._max_batch = max_batch
        self._send, self._receive = trio.open_memory_channel[_Pending](math.inf)
        #: Messages committed, and transactions used (for the benchmark and metrics).
        self.committed = 0
        self.batches = 0
        #: Rounds the database refused for its own reasons (waited out, never dropped).
        self.refusals = 0

    async def persist(
        self, agent_uuid: uuid.UUID, message: InboundMessage, trace_id: str | None = None
    ) -> int | None:
        """Store ``message``; returns once committed: its row id, None for a duplicate.

        If the caller is cancelled, the message may still be committed (and is then handed
        to whichever tree of the agent runs by then).
        """
        pending = _Pending(agent_uuid, message, trace_id)
        self._send.send_nowait(pending)
        await pending.done.wait()
        return pending.row_id

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        batch: list[_Pending] = []
        try:
            while True:
                batch = self._fill([await self._receive.receive()])
                await self._commit(batch)
        finally:
            unfinished = [p for p in batch if not p.done.is_set()]
            # Shutting down: what was handed to us may already be acknowledged upstream
            # (whatsmeow acks before we see it), so commit it before going, boundedly.
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + DRAIN_TIMEOUT
                # The round that was cancelled first (a row it did commit comes back as a
                # duplicate and is picked up by the agent's next start), then the queue.
                while batch := unfinished or self._fill([]):
                    unfinished = []
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
        # Nothing a message holds may stop the writer every agent shares: whatever cannot be
        # prepared or stored is quarantined, the rest goes in. A failure that is the
        # database's, not the message's, is waited out: nothing is dropped while it lasts.
        ready: list[_Pending] = []
        for pending in batch:
            if pending.item is None:
                try:
                    message, escaped = sanitize_inbound(pending.message)
                except Exception as exc:
                    await self._quarantine(pending, exc)
                    continue
                webhook = self._webhook(pending.agent_uuid, message)
                first = self._take_first_attempt is not None and self._take_first_attempt(
                    pending.agent_uuid
                )
                pending.item = NewInbound(
                    pending.agent_uuid, message, escaped, pending.trace_id, webhook, first
                )
            ready.append(pending)
        if not ready:
            return
        items = [p.item for p in ready if p.item is not None]
        backoff = Backoff(0.1, 5.0)
        while True:
            try:
                ids = await self._insert(items)
                break
            except Exception as exc:
                if _blames_message(exc):
                    if len(ready) > 1:
                        half = len(ready) // 2
                        await self._commit(ready[:half])
                        await self._commit(ready[half:])
                    else:
                        await self._quarantine(ready[0], exc)
                    return
                log.error(
                    "gatewayd.inbound.store_failed", error=type(exc).__name__, waiting=len(ready)
                )
                self.refusals += 1
                await trio.sleep(backoff.next())
        self.batches += 1
        if self._on_outbox is not None and any(
            row_id is not None and item.webhook is not None
            for item, row_id in zip(items, ids, strict=True)
        ):
            self._on_outbox()
        for pending, item, row_id in zip(ready, items, ids, strict=True):
            pending.row_id = row_id
            if row_id is not None:
                self.committed += 1
                try:
                    attempts = 1 if item.first_attempt else None
                    stored = StoredInbound(row_id, item.message, attempts=attempts)
                    self._deliver(item.agent_uuid, stored)
                except Exception:
                    # Stored: the agent's next tree reads it back from the table.
                    log.exception("gatewayd.inbound.deliver_failed", rowId=row_id)
            pending.done.set()

    def _webhook(self, agent_uuid: uuid.UUID, message: InboundMessage) -> NewDelivery | None:
        if self._outbox is None:
            return None
        try:
            return self._outbox(agent_uuid, message)
        except Exception:
            # The message is stored all the same; only its webhook is missing (and logged).
            log.exception("gatewayd.webhook.payload_failed", messageId=message.id)
            return None

    async def _insert(self, items: list[NewInbound]) -> list[int | None]:
        """One insert of ``items``, waiting out an outage; a failure that is not an outage
        (a lock or statement timeout) is tried three times, then raised."""
        tries = 0
        while True:
            try:
                return await messages_store.insert_inbound_batch(self._db, items)
            except StoreUnavailable:
                if not self._db.available:
                    await self._db.wait_available()
                    continue
                tries += 1
                if tries >= 3:
                    raise
                await trio.sleep(0.1 * 2**tries)

    async def _quarantine(self, pending: _Pending, exc: Exception) -> None:
        """Keep the id of a message that cannot be stored, and why; wake its caller."""
        message_id = textsafe.clean(str(pending.message.id))[:MAX_ID] or "unidentified"
        reason = f"unstorable: {type(exc).__name__}"
        details = exc.details if isinstance(exc, StoreError) else None
        sqlstate = details.get("sqlstate") if isinstance(details, dict) else None
        log.error(
            "gatewayd.inbound.quarantined", messageId=message_id, reason=reason, sqlstate=sqlstate
        )
        backoff = Backoff(0.1, 5.0)
        try:
            while True:
                try:
                    await wait_for_database(
                        self._db,
                        lambda: messages_store.quarantine_inbound(
                            self._db, pending.agent_uuid, message_id, reason
                        ),
                    )
                    return
                except StoreError as failure:
                    details = failure.details if isinstance(failure.details, dict) else {}
                    if details.get("sqlstate") == "23503":
                        # Its agent was deleted meanwhile: there is nothing to keep it for.
                        log.warning("gatewayd.inbound.dropped", messageId=message_id)
                        return
                    log.error("gatewayd.inbound.store_failed", error=type(failure).__name__)
                    await trio.sleep(backoff.next())
        finally:
            pending.done.set()

"""The sending half of an agent's tree (gatewayd/nursery/agent.py): the send worker for API
sends, the outbox for queued rows (AI replies, reports), and what one send does to its row.

Every send is a row before it goes out (gatewayd/store/outbound.py): ``sending`` is written
before WhatsApp gets it and ``sent`` after, so a crash in between leaves ``unknown``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import outcome
import structlog
import trio

from gatewayd.errors import (
    AgentStopped,
    GatewayError,
    NotConnected,
    SendOutcomeUnknown,
    StoreError,
    StoreUnavailable,
)
from gatewayd.nursery.bus import BusEvent
from gatewayd.nursery.commands import Outgoing, Sent, result_of
from gatewayd.nursery.handle import answer, release_shielded
from gatewayd.store import outbound as outbound_store
from gatewayd.store import webhooks as webhooks_store
from gatewayd.store.agents import AgentRecord
from gatewayd.store.retry import after_unavailable, wait_for_database
from gatewayd.store.webhooks import NewDelivery
from gatewayd.usecases import webhooks as webhook_events
from gatewayd.whatsapp.port import SendResult

if TYPE_CHECKING:
    from gatewayd.nursery.agents import AgentSupervisor
    from gatewayd.nursery.handle import AgentHandle

log = structlog.get_logger()

#: Queued rows the outbox reads at once.
OUTBOX_BATCH = 50


class Sending:
    """Mixed into ``AgentTree``: it provides ``sup``, ``handle`` and ``set_status``."""

    sup: AgentSupervisor
    handle: AgentHandle

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
                    result = await self._deliver(
                        command.row_id, command.message, command.trace_id, resumable=False
                    )
                answer(command, outcome.Value(result))
                answered = True
            except GatewayError as exc:
                log.warning("gatewayd.send.failed", error=exc.message, code=type(exc).__name__)
                answer(command, outcome.Error(exc))
                answered = True
            finally:
                if not answered:
                    # Cancelled or crashed mid-send: the caller must not wait forever, and a
                    # row WhatsApp never had frees its key (one it may have is "unknown").
                    answer(command, outcome.Error(AgentStopped("The agent stopped while sending")))
                    await release_shielded(self.sup.db, command.row_id, "the agent stopped")

    async def _outbox(self) -> None:
        """Send the agent's queued rows (AI replies, reports) whenever it is connected.

        Rows are read from the table, oldest first. Once a read has found all there was,
        the rows queued after it are handed over in memory (``handle.outbox_fresh``, filled
        by the forwarder after each commit) instead of being read back: one store call less
        per reply. Whatever does not go as planned (not connected, a row still queued, a
        row queued by someone who does not hand it over) sets it to None, and the table is
        read again. Rows of one agent are queued one after another (its forwarder), so a
        row handed over that the last read also found has an id no newer than that read's.

        While it waits with nothing left (``handle.outbox_idle``), the forwarder may write
        the next reply ``sending`` instead of ``queued`` and put it in ``handle.direct``:
        the outbox sends those first, without writing ``sending`` again (one commit less
        between the AI's answer and WhatsApp). The table never shows them as queued, so
        whatever is left there when the outbox stops, or cannot send them now, is queued
        again (at the latest by the next tree's outbox, before it reads the table).
        """
        handle, db = self.handle, self.sup.db
        handle.outbox_fresh = None
        newest = 0  # the newest row id taken from the table or handed over so far
        try:
            await self._requeue_direct()  # what an earlier tree could not
            while True:
                if not handle.connected:
                    await self._requeue_direct()  # not to stay "sending" while offline
                    await handle.online.wait()
                wake = handle.outbox_wake = trio.Event()  # before reading: no wake-up is missed
                direct = list(handle.direct.values())
                fresh: deque[outbound_store.OutboundRow] | None = handle.outbox_fresh
                if fresh is not None:
                    rows = [row for row in fresh if row.row_id > newest]
                    fresh.clear()
                else:
                    handle.outbox_fresh = deque()  # from now on, before the read's snapshot
                    rows = await wait_for_database(
                        db, lambda: outbound_store.queued(db, handle.id, OUTBOX_BATCH)
                    )
                    if len(rows) == OUTBOX_BATCH:
                        handle.outbox_fresh = None  # more in the table than read
                if not direct and not rows:
                    handle.outbox_idle = handle.outbox_fresh is not None
                    try:
                        await wake.wait()
                    finally:
                        handle.outbox_idle = False
                    continue
                newest = max([newest, *(row.row_id for row in rows)])
                for row in [*direct, *rows]:
                    # Stop at the first row that is not settled: replies keep their order.
                    if not handle.connected or not await self._send_queued(row):
                        handle.outbox_fresh = None
                        await self._requeue_direct()
                        break
        finally:
            handle.outbox_idle = False
            handle.outbox_fresh = None
            await self._requeue_direct_at_exit()

    async def _requeue_direct(self) -> None:
        """Queue again the rows written ``sending`` for the outbox that it did not send (the
        outbox then reads the table)."""
        handle, db = self.handle, self.sup.db
        if handle.direct:
            rows = list(handle.direct)
            await wait_for_database(db, lambda: outbound_store.requeue(db, *rows))
            for row_id in rows:
                handle.direct.pop(row_id, None)
            handle.outbox_fresh = None
            log.info("gatewayd.send.requeued", rows=len(rows))

    async def _requeue_direct_at_exit(self) -> None:
        """``_requeue_direct`` when the outbox or the forwarder ends (whichever ends last
        finds what the other left: a reply whose commit the forwarder finished while the tree
        was stopping)."""
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            try:
                await self._requeue_direct()
            except StoreError:
                pass  # left in handle.direct: the next tree's outbox queues them

    async def _send_queued(self, row: outbound_store.OutboundRow) -> bool:
        """Send one queued row; False when it is still queued (try again later)."""
        handle, db = self.handle, self.sup.db
        direct = row.row_id in handle.direct  # written "sending", its token taken
        max_age = self.sup.config().agents.reply_max_age
        age = (datetime.now(UTC) - row.created_at).total_seconds()
        with structlog.contextvars.bound_contextvars(traceId=row.trace_id):
            if age > max_age:
                log.warning("gatewayd.send.expired", rowId=row.row_id, age=round(age))
                error = f"not sent: the agent was not connected within {max_age:g} s"
                await wait_for_database(
                    db, lambda: outbound_store.finish(db, row.row_id, "expired", error)
                )
                handle.direct.pop(row.row_id, None)
                self._publish_handled(row.reply_to, row.reply_to_wa_id, "reply_expired")
                return True
            if not direct:
                await handle.bucket.take()
            try:
                await self._deliver(
                    row.row_id, row.message, row.trace_id, resumable=True, marked=direct
                )
            except NotConnected:
                return False  # queued again; sent after the next Connected
            except StoreUnavailable:
                await after_unavailable(self.sup.db)
                return False
            except SendOutcomeUnknown as exc:
                log.warning("gatewayd.send.unknown", error=exc.message)
                self._publish_handled(row.reply_to, row.reply_to_wa_id, "reply_unknown")
                return True
            except GatewayError as exc:
                log.warning("gatewayd.send.failed", error=exc.message, code=type(exc).__name__)
                self._publish_handled(row.reply_to, row.reply_to_wa_id, "reply_failed")
                return True
            self._publish_handled(row.reply_to, row.reply_to_wa_id, "replied")
            return True

    async def _emit_webhook(self, event: str, build: Callable[[AgentRecord], NewDelivery]) -> None:
        """Queue ``event`` for the session's webhook when it subscribes to it (opt-in events;
        docs/contract/api-v1.md §12). A failure to queue is logged, never the tree's end."""
        record, db = self.handle.record, self.sup.db
        if not webhook_events.subscribed(record, event):
            return
        try:
            delivery = build(record)
            await wait_for_database(db, lambda: webhooks_store.enqueue(db, record.id, delivery))
        except Exception:
            log.exception("gatewayd.webhook.enqueue_failed", event=event)
            return
        self.sup.webhooks.wake()

    def _publish_handled(
        self, inbound_row: int | None, message_id: str | None, result: str
    ) -> None:
        if inbound_row is not None:
            data = {"rowId": inbound_row, "id": message_id, "outcome": result}
            self.sup.bus.publish(BusEvent(self.handle.agent_id, "handled", data))

    async def _deliver(
        self,
        row_id: int,
        m: Outgoing,
        trace_id: str | None,
        *,
        resumable: bool,
        marked: bool = False,
    ) -> Sent:
        """Send the message of an open row: ``sending`` first, ``sent`` after.

        ``marked``: the row was written ``sending`` already (``handle.direct``).

        NotConnected means WhatsApp never had it: a resumable row is queued again, an API
        send fails. Any other error from WhatsApp ends the row ``failed``. Cancelled (or
        crashed) while WhatsApp may have it: ``unknown``, never sent again.
        """
        handle, db = self.handle, self.sup.db
        if not handle.connected:
            if marked:
                await self._requeue_direct()
            raise NotConnected("The WhatsApp session is not connected")
        if marked:
            handle.direct.pop(row_id, None)  # from here on, WhatsApp may have it
        elif not await outbound_store.mark_sending(db, row_id):
            raise AgentStopped("The send was cancelled before it went out")
        try:
            result = await self._client_send(m)
        except NotConnected as exc:
            reason = exc.message
            if resumable:
                await wait_for_database(db, lambda: outbound_store.requeue(db, row_id))
            else:
                await wait_for_database(
                    db, lambda: outbound_store.release_key(db, row_id, reason, sending=True)
                )
            raise
        except SendOutcomeUnknown as exc:
            reason = exc.message
            await wait_for_database(
                db, lambda: outbound_store.finish(db, row_id, "unknown", reason)
            )
            raise
        except GatewayError as exc:
            reason = exc.message
            failure = {"error": {"type": type(exc).__name__, "message": reason}}
            await wait_for_database(
                db, lambda: outbound_store.finish(db, row_id, "failed", reason, failure)
            )
            raise
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                try:
                    await outbound_store.finish(db, row_id, "unknown", "interrupted while sending")
                except StoreError:
                    pass  # still "sending": the next start records it as unknown
            raise
        sent = result_of(result, row_id)
        answer = {"messageId": sent.message_id, "timestampMs": sent.timestamp_ms}
        await wait_for_database(
            db,
            lambda: outbound_store.mark_sent(
                db,
                row_id,
                wa_message_id=result.message_id,
                timestamp_ms=result.timestamp_ms,
                result=answer,
            ),
        )
        self.sup.metrics.messages_sent.labels(handle.agent_id).inc()
        self.sup.metrics.wa_messages_sent.labels(handle.agent_id).inc()
        log.info("gatewayd.send.sent", messageId=result.message_id, kind=m.kind)
        await self._emit_webhook(
            webhook_events.SENT,
            lambda record: webhook_events.sent_delivery(
                record, message_id=result.message_id, to=m.to, kind=m.kind, text=m.text,
                timestamp_ms=result.timestamp_ms,
            ),
        )  # fmt: skip
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
        return sent

    async def _client_send(self, m: Outgoing) -> SendResult:
        client = self.handle.client
        if m.kind == "text":
            return await client.send_text(m.to, m.text or "", quote=m.quote, mentions=m.mentions)
        assert m.data is not None
        if m.kind == "image":
            return await client.send_image(
                m.to,
                m.data,
                mimetype=m.mimetype or "image/jpeg",
                caption=m.text,
                filename=m.filename,
                quote=m.quote,
            )
        if m.kind == "document":
            return await client.send_document(
                m.to,
                m.data,
                mimetype=m.mimetype or "application/octet-stream",
                filename=m.filename or "document",
                caption=m.text,
                quote=m.quote,
            )
        if m.kind == "audio":
            return await client.send_audio(
                m.to, m.data, mimetype=m.mimetype or "audio/ogg", ptt=m.ptt, quote=m.quote
            )
        return await client.send_video(
            m.to, m.data, mimetype=m.mimetype or "video/mp4", caption=m.text, quote=m.quote
        )

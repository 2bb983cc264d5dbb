"""The webhook dispatcher: takes due deliveries from the outbox and makes one try of each.

::

    dispatcher  ── claim due rows (FOR UPDATE SKIP LOCKED, leased) ──▶ one task per try
                   at most ``webhooks.concurrency`` in flight, ``per_session`` per session

A delivery is a row before anything is tried (gatewayd/store/webhooks.py), so a crash loses
nothing: the rows a dead process held come back once their lease has passed, and are tried
again (at least once: a receiver may see a try twice, with the same ``webhook-id``).

The schedule (``next_delay``): the first try at once, ``max_retries`` quick retries after
``retry_backoff``·2ⁿ s (1, 2, 4 s), then the longer ``schedule`` (its last value repeating)
until ``max_age`` from the first try, when the delivery is dead (replayable). Success is a
2xx; anything else — an error status, no answer within ``timeout``, a refused address — is a
failed try, recorded with its reason.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs
import httpx
import structlog
import trio

from gatewayd.config import Config, WebhooksConfig
from gatewayd.errors import StoreError
from gatewayd.metrics import Metrics
from gatewayd.outbound import new_client
from gatewayd.outbound.webhook import Answer, new_webhook_secret, post_signed
from gatewayd.store import agents as agents_store
from gatewayd.store import webhooks as webhooks_store
from gatewayd.store.db import Database
from gatewayd.store.retry import after_unavailable, wait_for_database
from gatewayd.store.webhooks import Claimed, TryResult

if TYPE_CHECKING:
    from gatewayd.nursery.handle import AgentHandle

log = structlog.get_logger()

#: Seconds a claimed row stays leased beyond the try's own timeout: a worker that died is
#: replaced this long after its try would have ended.
LEASE_MARGIN = 5.0


def next_delay(tries: int, age: float, cfg: WebhooksConfig) -> float | None:
    """Seconds until the next try after ``tries`` failed tries of a schedule that began
    ``age`` seconds ago; None once the schedule has run out (the delivery is dead).

    The last try falls on ``max_age`` itself, so none is given up before its time."""
    if age >= cfg.max_age:
        return None
    if tries <= cfg.max_retries:
        delay = cfg.retry_backoff * 2.0 ** min(tries - 1, 30)
    else:
        delay = cfg.schedule[min(tries - cfg.max_retries - 1, len(cfg.schedule) - 1)]
    return max(0.0, min(delay, cfg.max_age - age))


def new_webhook_client() -> httpx.AsyncClient:
    """The dispatcher's own client, with its own connection pool (slow receivers never hold
    the AI client's)."""
    return new_client(limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))


#: A signed link to the media of a stored message (its row id and message type), or None.
MediaLink = Callable[[int, "str | None"], "str | None"]


class WebhookDispatcher:
    """Run with ``nursery.start(dispatcher.run)``; ``wake()`` when a delivery was queued."""

    def __init__(
        self,
        db: Database,
        config: Callable[[], Config],
        metrics: Metrics,
        *,
        http: httpx.AsyncClient | None = None,
        media_link: MediaLink | None = None,
    ) -> None:
        self.db = db
        self.config = config
        self.metrics = metrics
        self._http = http
        #: A fresh signed link to a received message's media, made at each try so it is valid
        #: when the receiver fetches it (None: ``media_url`` stays as enqueued).
        self.media_link = media_link
        self._wake = trio.Event()
        #: Tries in flight, per session.
        self._busy: Counter[uuid.UUID] = Counter()
        self.in_flight = 0
        #: Tries made by this dispatcher, by result (for tests and the benchmark).
        self.successes = 0
        self.failures = 0

    def wake(self) -> None:
        """Look for due deliveries now (something was queued, or a slot came free)."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with AsyncExitStack() as stack:
            client = self._http
            if client is None:
                client = await stack.enter_async_context(new_webhook_client())
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    await self._round(nursery, client)

    async def _round(self, nursery: trio.Nursery, client: httpx.AsyncClient) -> None:
        cfg = self.config().webhooks
        wake = self._wake = trio.Event()  # before reading: no wake-up is missed
        free = cfg.concurrency - self.in_flight
        claimed: list[Claimed] = []
        if free > 0:
            try:
                claimed = await webhooks_store.claim_due(
                    self.db,
                    limit=free,
                    per_session=min(cfg.per_session, cfg.concurrency),
                    busy=dict(self._busy),
                    lease=cfg.timeout + LEASE_MARGIN,
                )
            except StoreError as exc:
                log.warning("gatewayd.webhook.claim_failed", error=exc.message)
                await after_unavailable(self.db)
                return
        for delivery in claimed:
            self._busy[delivery.agent_id] += 1
            self.in_flight += 1
            self.metrics.webhook_in_flight.set(self.in_flight)
            nursery.start_soon(self._try, client, delivery)
        if claimed and len(claimed) == free:
            return  # there may be more due; the next round takes what the slots allow
        # Sleep until the next delivery falls due, or a wake-up (something queued, a slot
        # free). With nothing waiting there is no deadline at all: an idle daemon does not
        # poll, and whatever this process queues wakes it.
        try:
            due_in = await webhooks_store.seconds_to_next_due(self.db)
        except StoreError:
            due_in = cfg.poll_interval
        if due_in is None:
            await wake.wait()
            return
        # Not sooner than poll_interval: a due delivery that could not be claimed (its session's
        # slots are full) is taken when a slot frees (a wake-up) or at the next look.
        with trio.move_on_after(max(due_in, cfg.poll_interval)):
            await wake.wait()

    async def _try(self, client: httpx.AsyncClient, delivery: Claimed) -> None:
        try:
            with structlog.contextvars.bound_contextvars(
                deliveryId=delivery.id, event=delivery.event, sessionId=str(delivery.agent_id)
            ):
                await self._try_one(client, delivery)
        except Exception:
            # Never the dispatcher's end: the row's lease runs out and it is tried again.
            log.exception("gatewayd.webhook.try_crashed", deliveryId=delivery.id)
        finally:
            self._busy[delivery.agent_id] -= 1
            if self._busy[delivery.agent_id] <= 0:
                del self._busy[delivery.agent_id]
            self.in_flight -= 1
            self.metrics.webhook_in_flight.set(self.in_flight)
            self.wake()

    async def _try_one(self, client: httpx.AsyncClient, delivery: Claimed) -> None:
        cfg = self.config().webhooks
        db = self.db
        if not delivery.url:
            answer = Answer(None, "the session has no webhook URL", 0)
        else:
            secret = delivery.secret
            if not secret:
                fresh = new_webhook_secret()
                secret = await wait_for_database(
                    db, lambda: webhooks_store.ensure_secret(db, delivery.agent_id, fresh)
                )
            body = json.dumps(self._with_media_link(delivery), ensure_ascii=False).encode()
            answer = await post_signed(
                client,
                delivery.url,
                secret=secret or "",
                webhook_id=delivery.webhook_id,
                body=body,
                headers=delivery.headers,
                timeout=cfg.timeout,
                allow_private=cfg.allow_private_urls,
            )
        result = self._outcome(delivery, answer, cfg)
        await wait_for_database(db, lambda: webhooks_store.finish_try(db, delivery, result))
        self._count(delivery, answer, result)
        if answer.ok:
            # The receiver is back: what waits on the long schedule for it goes now, not in
            # up to an hour (a receiver down for ten minutes gets the backlog at once).
            released = await wait_for_database(
                db, lambda: webhooks_store.release_backlog(db, delivery.agent_id)
            )
            if released:
                log.info("gatewayd.webhook.backlog_released", count=released)
                self.wake()

    def _with_media_link(self, delivery: Claimed) -> dict[str, Any]:
        payload = delivery.payload
        message = payload.get("message")
        if self.media_link is None or delivery.message_row is None or not isinstance(message, dict):
            return payload
        link = self.media_link(delivery.message_row, message.get("type"))
        return payload if link is None else {**payload, "message": {**message, "media_url": link}}

    def _outcome(self, delivery: Claimed, answer: Answer, cfg: WebhooksConfig) -> TryResult:
        if answer.ok:
            status: webhooks_store.Status = "delivered"
            delay = None
        else:
            age = (datetime.now(UTC) - delivery.schedule_start).total_seconds()
            delay = next_delay(delivery.attempts, age, cfg) if delivery.url else None
            status = "dead" if delay is None else "failed"
        return TryResult(
            status=status,
            status_code=answer.status_code,
            duration_ms=answer.duration_ms,
            error=answer.error,
            next_in=delay,
        )

    def _count(self, delivery: Claimed, answer: Answer, result: TryResult) -> None:
        m = self.metrics
        m.webhook_duration.observe(answer.duration_ms / 1000)
        if answer.ok:
            self.successes += 1
            m.webhook_attempts.labels("success").inc()
            m.webhook_deliveries.labels("delivered").inc()
            log.info(
                "gatewayd.webhook.delivered",
                attempt=delivery.attempts,
                status=answer.status_code,
                ms=answer.duration_ms,
            )
            return
        self.failures += 1
        m.webhook_attempts.labels("failure").inc()
        if result.status == "dead":
            m.webhook_deliveries.labels("dead").inc()
            log.error("gatewayd.webhook.dead", attempt=delivery.attempts, error=answer.error)
        else:
            log.warning(
                "gatewayd.webhook.failed",
                attempt=delivery.attempts,
                status=answer.status_code,
                error=answer.error,
                retryIn=round(result.next_in or 0, 3),
            )


async def refresh_webhook(db: Database, handle: AgentHandle | None) -> None:
    """Take up a session's changed name or webhook settings (url, secret, events, headers) in
    its running handle (None: not running, nothing to do); its next event uses them."""
    if handle is None:
        return
    record = await agents_store.get_agent(db, handle.agent_id)
    if record is None:
        return
    handle.record = attrs.evolve(
        handle.record,
        name=record.name,
        webhook_url=record.webhook_url,
        webhook_secret=record.webhook_secret,
        webhook_events=record.webhook_events,
        webhook_headers=record.webhook_headers,
    )

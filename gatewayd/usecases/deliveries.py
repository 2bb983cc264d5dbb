"""A session's webhook deliveries as its user sees them: the list, replay, a test event
(docs/contract/api-v1.md §12)."""

from __future__ import annotations

import attrs

from gatewayd.errors import InvalidPayload, NotFound
from gatewayd.store import webhooks as webhooks_store
from gatewayd.store.agents import AgentRecord
from gatewayd.store.webhooks import DeliveryRow
from gatewayd.usecases.core import Services
from gatewayd.usecases.webhooks import enqueue_test

STATUSES = ("pending", "failed", "delivered", "dead")


@attrs.frozen
class DeliveryQuery:
    status: str | None = None
    limit: int = 50
    #: The last id of the previous page: the next page holds older deliveries.
    before: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise InvalidPayload(
                f"status must be one of {', '.join(STATUSES)}", details={"field": "status"}
            )
        if not 1 <= self.limit <= 200:
            raise InvalidPayload("limit must be 1-200", details={"field": "limit"})


@attrs.frozen
class DeliveryPage:
    deliveries: list[DeliveryRow]
    #: The cursor of the next page; None on the last one.
    next_cursor: int | None


async def list_deliveries(
    services: Services, record: AgentRecord, query: DeliveryQuery
) -> DeliveryPage:
    # One more than the page: a full last page then says nothing follows it.
    rows = await webhooks_store.list_deliveries(
        services.db, record.id, query.status, query.limit + 1, query.before
    )
    page = rows[: query.limit]
    return DeliveryPage(page, page[-1].id if len(rows) > query.limit else None)


async def replay(services: Services, record: AgentRecord, delivery_id: int) -> None:
    """Send a delivery again from now on a fresh schedule (a dead one too)."""
    if not await webhooks_store.replay(services.db, record.id, delivery_id):
        raise NotFound("Delivery not found")
    services.webhooks.wake()


async def send_test(services: Services, record: AgentRecord) -> int:
    """Queue a ``webhook.test`` event to the session's webhook; its delivery id."""
    if record.webhook_url is None:
        raise InvalidPayload("The session has no webhook_url", details={"field": "webhook_url"})
    delivery_id = await enqueue_test(services.db, record)
    services.webhooks.wake()
    return delivery_id

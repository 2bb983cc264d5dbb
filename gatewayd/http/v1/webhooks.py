"""/api/v1 webhook deliveries of a session: list, replay, test (docs/contract/api-v1.md §12)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gatewayd.errors import InvalidPayload, NotFound
from gatewayd.http.request import services
from gatewayd.http.v1.common import authed, iso, ok
from gatewayd.store.agents import AgentRecord
from gatewayd.store.webhooks import DeliveryRow
from gatewayd.usecases import deliveries, user_sessions
from gatewayd.usecases.identity import Principal


def _number(text: str | None, field: str, *, default: int | None = None) -> int | None:
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise InvalidPayload(f"'{field}' must be a whole number", details={"field": field})
    return int(text)


async def _owned(request: Request, principal: Principal) -> AgentRecord:
    return await user_sessions.owned_session(
        services(request), principal.user_id, request.path_params["session_id"]
    )


def _delivery(row: DeliveryRow) -> dict[str, Any]:
    return {
        "delivery_id": str(row.id),
        "webhook_id": row.webhook_id,
        "event": row.event,
        "status": row.status,
        "attempts": row.attempts,
        "last_status_code": row.last_status_code,
        "last_error": row.last_error,
        "next_attempt_at": iso(row.next_attempt_at),
        "created_at": iso(row.created_at),
        "delivered_at": iso(row.delivered_at),
        "message_id": row.wa_message_id,
    }


async def list_deliveries(request: Request, principal: Principal) -> Response:
    params = request.query_params
    query = deliveries.DeliveryQuery(
        status=params.get("status"),
        limit=_number(params.get("limit"), "limit", default=50) or 0,
        before=_number(params.get("cursor"), "cursor"),
    )
    page = await deliveries.list_deliveries(
        services(request), await _owned(request, principal), query
    )
    cursor = page.next_cursor
    data = {
        "deliveries": [_delivery(row) for row in page.deliveries],
        "next_cursor": str(cursor) if cursor is not None else None,
    }
    return ok(data, "Deliveries retrieved successfully")


async def replay_delivery(request: Request, principal: Principal) -> Response:
    record = await _owned(request, principal)
    delivery_id = request.path_params["delivery_id"]
    if not (delivery_id.isascii() and delivery_id.isdigit() and len(delivery_id) <= 18):
        raise NotFound("Delivery not found")
    await deliveries.replay(services(request), record, int(delivery_id))
    return ok({"delivery_id": delivery_id, "status": "pending"}, "Delivery queued again")


async def test_webhook(request: Request, principal: Principal) -> Response:
    record = await _owned(request, principal)
    delivery_id = await deliveries.send_test(services(request), record)
    data = {"delivery_id": str(delivery_id), "event": "webhook.test", "status": "pending"}
    return ok(data, "Test event queued", 202)


def webhook_routes() -> list[BaseRoute]:
    base = "/api/v1/sessions/{session_id}/webhook"
    return [
        Route(f"{base}/deliveries", authed(list_deliveries), methods=["GET"]),
        Route(
            f"{base}/deliveries/{{delivery_id}}/replay", authed(replay_delivery), methods=["POST"]
        ),
        Route(f"{base}/test", authed(test_webhook), methods=["POST"]),
    ]

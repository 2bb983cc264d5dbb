"""Operations endpoints: ``GET /health`` and ``GET /metrics``."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gatewayd.metrics import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from gatewayd.nursery.supervisor import Gateway


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def health(request: Request) -> Response:
    gateway = _gateway(request)
    begin = time.perf_counter()
    db_ok = await gateway.db.ping(timeout=gateway.config.database.health_timeout)
    database = {
        "status": "up" if db_ok else "down",
        "latencyMs": round((time.perf_counter() - begin) * 1000, 1),
    }
    whatsapp = gateway.whatsapp_health()
    body = {
        "status": "ok" if db_ok else "unavailable",
        "uptime": round(gateway.uptime(), 3),
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "components": {"database": database, "whatsapp": whatsapp},
    }
    return JSONResponse(body, status_code=200 if db_ok else 503)


async def metrics(request: Request) -> Response:
    gateway = _gateway(request)
    gateway.refresh_gauges()
    return Response(gateway.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def ops_routes() -> list[BaseRoute]:
    return [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]

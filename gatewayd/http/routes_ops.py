"""Operations endpoints: ``GET /health`` and ``GET /metrics``."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gatewayd.http.request import services
from gatewayd.metrics import CONTENT_TYPE_LATEST


class Ops(Protocol):
    """What the operations endpoints ask the daemon."""

    def uptime(self) -> float: ...

    def whatsapp_health(self) -> dict[str, Any]: ...

    def refresh_gauges(self) -> None: ...


def _ops(request: Request) -> Ops:
    ops: Ops = request.app.state.ops
    return ops


async def health(request: Request) -> Response:
    ops, found = _ops(request), services(request)
    begin = time.perf_counter()
    db_ok = await found.db.ping(timeout=found.config.database.health_timeout)
    database = {
        "status": "up" if db_ok else "down",
        "latencyMs": round((time.perf_counter() - begin) * 1000, 1),
    }
    whatsapp = ops.whatsapp_health()
    body = {
        "status": "ok" if db_ok else "unavailable",
        "uptime": round(ops.uptime(), 3),
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "components": {"database": database, "whatsapp": whatsapp},
    }
    return JSONResponse(body, status_code=200 if db_ok else 503)


async def metrics(request: Request) -> Response:
    _ops(request).refresh_gauges()
    return Response(services(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


def ops_routes() -> list[BaseRoute]:
    return [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]

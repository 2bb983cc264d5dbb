"""Operations endpoints: ``GET /health`` and ``GET /metrics``.

``/health`` asks the database at most once per ``HEALTH_INTERVAL`` however often it is
asked (``DatabaseHealth``): a load balancer, a dashboard and a monitor polling it many times
a second cost one ``SELECT 1`` every quarter second, not one each.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import attrs
import trio
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


#: Seconds a database reading answers /health: a database that went down is reported at
#: most this long after (at once when a query already found it down: the breaker is open).
HEALTH_INTERVAL = 0.25


class Pingable(Protocol):
    """What ``DatabaseHealth`` asks the database (gatewayd/store/db.py ``Database``)."""

    @property
    def available(self) -> bool: ...

    async def ping(self, timeout: float) -> bool: ...  # noqa: ASYNC109


@attrs.frozen
class Reading:
    """One answer of the database: up or not, how long the ping took, when it began."""

    up: bool
    latency: float
    at: float  # trio.current_time() when the ping began


@attrs.define
class _Ping:
    done: trio.Event = attrs.field(factory=trio.Event)
    reading: Reading | None = None


@attrs.define
class DatabaseHealth:
    """The database's state for /health, read at most once per ``interval``.

    A reading begun less than ``interval`` ago answers; askers that come while a ping is
    under way wait for it and share its reading, so the database sees at most one ping per
    ``interval`` (and never two at once), whatever the rate of requests. A database that
    went down is reported within ``interval`` (the next ping begins after it), and at once
    while the store's breaker is open (gatewayd/store/db.py): then nothing is pinged.
    """

    db: Pingable
    timeout: Callable[[], float]
    interval: float = HEALTH_INTERVAL
    _last: Reading | None = None
    _pending: _Ping | None = None

    async def read(self) -> Reading:
        if not self.db.available:
            return Reading(False, 0.0, trio.current_time())
        while True:
            last = self._last
            if last is not None and trio.current_time() - last.at < self.interval:
                return last
            pending = self._pending
            if pending is None:
                return await self._ping()
            await pending.done.wait()
            if pending.reading is not None:
                return pending.reading
            # Its asker was cancelled before the answer: the next one asks again.

    async def _ping(self) -> Reading:
        pending = self._pending = _Ping()
        try:
            at = trio.current_time()
            begin = time.perf_counter()
            up = await self.db.ping(timeout=self.timeout())
            reading = Reading(up, time.perf_counter() - begin, at)
            self._last = pending.reading = reading
            return reading
        finally:
            self._pending = None
            pending.done.set()


def _database_health(request: Request) -> DatabaseHealth:
    """The application's one ``DatabaseHealth``, made at its first /health."""
    state = request.app.state
    try:
        found: DatabaseHealth = state.database_health
    except AttributeError:
        app = services(request)
        found = state.database_health = DatabaseHealth(
            app.db, lambda: app.config.database.health_timeout
        )
    return found


def _ops(request: Request) -> Ops:
    ops: Ops = request.app.state.ops
    return ops


async def health(request: Request) -> Response:
    ops = _ops(request)
    reading = await _database_health(request).read()
    db_ok = reading.up
    database = {
        "status": "up" if db_ok else "down",
        "latencyMs": round(reading.latency * 1000, 1),
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

"""The Starlette application factory and the hypercorn task that serves it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from gatewayd.http import middleware as mw
from gatewayd.http.errors import error_response
from gatewayd.http.routes_ops import ops_routes
from gatewayd.http.validate import check_content_type, parse_body

if TYPE_CHECKING:
    from gatewayd.nursery.supervisor import Gateway

log = structlog.get_logger()


#: Bodies larger than this are parsed in a worker thread, so the event loop keeps serving.
PARSE_INLINE_BYTES = 64 * 1024
SIM_PREFIX = "/_sim/"


async def read_json(request: Request, *, any_text: bool | None = None) -> dict[str, Any]:
    """The request's JSON object, checked whole by ``gatewayd.http.validate``: InvalidPayload
    (or UnsupportedMediaType) says what is wrong before any handler acts on it.

    Strings with NUL or lone surrogates are refused unless ``any_text``; by default they
    pass only under ``/_sim/``, whose bodies stand for what WhatsApp sends, not for a client.
    """
    if any_text is None:
        any_text = request.url.path.startswith(SIM_PREFIX)
    check_content_type(request.headers.get("content-type"))
    body = await request.body()
    if len(body) <= PARSE_INLINE_BYTES:
        return parse_body(body, any_text=any_text)
    return await trio.to_thread.run_sync(lambda: parse_body(body, any_text=any_text))


async def _http_exception(request: Request, exc: Exception) -> Response:
    return error_response(request.scope, exc)


def create_app(gateway: Gateway, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    settings: Callable[[], Any] = lambda: gateway.config  # noqa: E731 - read live on every request
    from gatewayd.http.routes_agents import agents_routes
    from gatewayd.http.routes_docs import docs_routes

    routes = [*ops_routes(), *agents_routes(), *docs_routes(), *extra_routes]
    if gateway.config.whatsapp.mode == "sim" and not gateway.config.whatsapp.sim_url:
        # The simulated network's control API exists in sim mode only, and a simnet
        # process (sim_url) serves its own.
        from gatewayd.http.routes_sim import sim_routes

        routes += sim_routes()
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(mw.TraceId),
            Middleware(mw.RequestMetrics, metrics=gateway.metrics),
            Middleware(mw.SecurityHeaders),
            Middleware(mw.Cors, settings=settings),
            Middleware(mw.Errors),
            Middleware(mw.BodyLimit, settings=settings),
        ],
        exception_handlers={HTTPException: _http_exception},
    )
    app.state.gateway = gateway
    return app


def hypercorn_config(host: str, port: int, grace: float) -> HypercornConfig:
    config = HypercornConfig()
    # IPv6 literals need brackets in a bind string.
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None  # RequestMetrics and our own log lines cover requests
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = grace
    config.include_server_header = False
    return config


async def serve_http(
    app: Starlette,
    config: HypercornConfig,
    shutdown_trigger: Callable[[], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns, then give in-flight requests
    ``config.graceful_timeout`` seconds to finish."""
    await serve(app, config, shutdown_trigger=shutdown_trigger, task_status=task_status)  # type: ignore[arg-type]

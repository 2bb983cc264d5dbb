"""The Starlette application factory and the hypercorn task that serves it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

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

from gatewayd.config import Config
from gatewayd.http import middleware as mw
from gatewayd.http.errors import error_response
from gatewayd.http.routes_agents import agents_routes
from gatewayd.http.routes_dashboard import Dashboard, dashboard_routes
from gatewayd.http.routes_docs import docs_routes
from gatewayd.http.routes_media import media_routes
from gatewayd.http.routes_ops import Ops, ops_routes
from gatewayd.http.routes_sim import InProcess, sim_routes
from gatewayd.http.v1.agents import agents_v1_routes
from gatewayd.http.v1.analytics import analytics_routes
from gatewayd.http.v1.auth import auth_routes
from gatewayd.http.v1.sessions import sessions_routes
from gatewayd.http.v1.webhooks import webhook_routes
from gatewayd.http.v1.ws import ws_routes
from gatewayd.usecases.core import Services
from gatewayd.whatsapp.sim import SimulatedWhatsApp

log = structlog.get_logger()


async def _http_exception(request: Request, exc: Exception) -> Response:
    return error_response(request.scope, exc)


def create_app(
    services: Services,
    ops: Ops,
    *,
    sim: SimulatedWhatsApp | None = None,
    extra_routes: Sequence[BaseRoute] = (),
    dashboard: Dashboard | None = None,
) -> Starlette:
    """The daemon's HTTP application. ``sim``: the in-process simulated network, whose
    control API (``/_sim/``) is served only then (a simnet process serves its own).
    ``dashboard``: the web app served at ``/`` (default: the one built into the package)."""
    settings: Callable[[], Config] = services.settings
    dashboard = dashboard if dashboard is not None else Dashboard()
    routes = [
        *ops_routes(),
        *agents_routes(),
        *auth_routes(),
        # The agent family's literal paths (/api/v1/sessions/create, …) before /{session_id}.
        *agents_v1_routes(),
        *sessions_routes(),
        *webhook_routes(),
        *analytics_routes(),
        *ws_routes(),
        *media_routes(services.media),
        *docs_routes(settings=settings),
        *dashboard_routes(dashboard),
        *extra_routes,
    ]
    if sim is not None:
        routes += sim_routes()
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(mw.TraceId),
            Middleware(mw.RequestMetrics, metrics=services.metrics),
            Middleware(mw.SecurityHeaders),
            Middleware(mw.Cors, settings=settings),
            Middleware(mw.Errors),
            Middleware(mw.BodyLimit, settings=settings),
        ],
        exception_handlers={HTTPException: _http_exception},
    )
    # Client-side routes of the app: whatever no route answers, outside the reserved paths.
    app.router.default = dashboard.fallback(app.router.default)
    app.state.services = services
    app.state.ops = ops
    if sim is not None:
        app.state.sim_host = InProcess(sim)
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
